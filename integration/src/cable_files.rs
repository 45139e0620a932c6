//! A cable of a scenario: its config and data dir written, its wallets funded, and
//! `cable-node` run on them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bitcoin::{Address, Amount, Network};
use regtest::Regtest;
use wallet::keys::NodeKeys;
use wallet::onchain::NodeWallet;

use crate::binary;
use crate::setup::{CableSetup, Host};

/// A cable's config and data dir.
pub struct CableFiles {
    /// The config file.
    pub config: PathBuf,
    /// The data dir.
    pub data_dir: PathBuf,
    /// Where `run` writes its log.
    pub log: PathBuf,
    /// Where `run` writes its JSON report.
    pub report: PathBuf,
    /// Environment of `run`, e.g. `FAILPOINTS`.
    pub env: Vec<(String, String)>,
    /// Where `run` runs: a network namespace, or this host.
    pub host: Option<Host>,
}

impl CableFiles {
    /// Write a cable config under `dir` pointing at `endpoint`, and fund its wallet with
    /// `funds` (confirmed).
    pub fn create(
        bitcoind: &Regtest,
        dir: &Path,
        endpoint: &str,
        setup: &CableSetup,
        funds: Amount,
    ) -> anyhow::Result<Self> {
        let files = Self::create_unfunded(dir, bitcoind, endpoint, setup)?;
        let address = funding_address(&files.data_dir)?;
        bitcoind.fund(&address, funds)?;
        Ok(files)
    }

    /// [`CableFiles::create`] without funding the wallet (fund many at once with
    /// [`Regtest::fund_many`] and [`funding_address`]).
    pub fn create_unfunded(
        dir: &Path,
        bitcoind: &Regtest,
        endpoint: &str,
        setup: &CableSetup,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let config = dir.join("cable.toml");
        fs::write(
            &config,
            format!(
                "network = \"regtest\"\nsocket = \"{endpoint}\"\noutlet_id = {:?}\n\n\
                 [chain]\nrpc_url = \"{}\"\ncookie_file = \"{}\"\n\n\
                 [policy]\nmax_price_msat_per_wh = {}\nmax_session_sat = {}\nschemes = {:?}\n\
                 spillman_lock_blocks = {}\n{}\n\n\
                 [session]\nunplug_when_idle_secs = {:?}\nreconnect_secs = 60\n",
                setup.outlet_id,
                setup
                    .host
                    .as_ref()
                    .map_or_else(|| bitcoind.rpc_url(), |h| h.rpc_url.clone()),
                bitcoind.cookie_file().display(),
                setup.max_price_msat_per_wh,
                setup.max_session_sat,
                setup.schemes,
                setup.spillman_lock_blocks,
                setup.policy_toml,
                setup.unplug_when_idle_secs,
            ),
        )?;
        if !setup.hw_toml.is_empty() {
            let mut text = fs::read_to_string(&config)?;
            text.push_str(&format!("\n[hw]\n{}\n", setup.hw_toml));
            fs::write(&config, text)?;
        }
        if setup.lightning_hub.is_some() || setup.lightning_channel_sat.is_some() {
            let mut text = fs::read_to_string(&config)?;
            text.push_str("\n[lightning]\n");
            if let Some(hub) = &setup.lightning_hub {
                text.push_str(&format!("hub = {hub:?}\n"));
            }
            if let Some(sat) = setup.lightning_channel_sat {
                text.push_str(&format!("channel_sat = {sat}\n"));
            }
            fs::write(&config, text)?;
        }
        let data_dir = dir.join("cable-data");
        fs::create_dir_all(&data_dir)?;
        Ok(CableFiles {
            config,
            data_dir,
            log: dir.join("cable.log"),
            report: dir.join("cable-report.json"),
            env: Vec::new(),
            host: setup.host.clone(),
        })
    }

    /// Start `cable-node run` in the background.
    pub fn spawn_run(&self) -> anyhow::Result<Child> {
        let log = fs::File::create(&self.log)?;
        let program = binary("cable-node")?;
        let mut command = match &self.host {
            Some(host) => host.command(&program),
            None => Command::new(program),
        };
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("run")
            .arg("--report")
            .arg(&self.report)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting cable-node")
    }

    /// Run `cable-node run` to its end, with a time limit.
    pub fn run(&self, limit: Duration) -> anyhow::Result<Output> {
        let mut child = self.spawn_run()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                let text = fs::read_to_string(&self.log).unwrap_or_default();
                return Ok(Output {
                    status,
                    stdout: Vec::new(),
                    stderr: text.into_bytes(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "cable-node ran past {limit:?}:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl CableFiles {
    /// The report of the cable's last `run` (`--report`): its session, outcome and payments.
    /// Errors: no report written, or one that does not parse.
    pub fn session_report(&self) -> anyhow::Result<cable_node::payer::SessionReport> {
        let text = std::fs::read_to_string(&self.report)?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Run `cable-node <args>` on this cable to its end; its stdout, or an error with its
    /// stderr.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(binary("cable-node")?)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cable-node {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Fund the cable's Lightning wallet with `amount` (confirmed), through
    /// `cable-node address --lightning`.
    pub fn fund_lightning(&self, bitcoind: &Regtest, amount: Amount) -> anyhow::Result<()> {
        let out = Command::new(binary("cable-node")?)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["address", "--lightning"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "cable-node address --lightning: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let address: Address<bitcoin::address::NetworkUnchecked> =
            text.lines().last().unwrap_or_default().trim().parse()?;
        bitcoind.fund(&address.require_network(Network::Regtest)?, amount)?;
        Ok(())
    }
}

/// The address the cable of `data_dir` is funded at (its wallet's receive address 0).
pub fn funding_address(data_dir: &Path) -> anyhow::Result<Address> {
    let keys = NodeKeys::load_or_create(data_dir, Network::Regtest)?;
    let mut wallet = NodeWallet::open(data_dir, &keys)?;
    Ok(wallet.receive_address(0)?)
}
