//! A `socket-node` process of a scenario: its config written, started, stopped, restarted, and
//! called over gRPC.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::v1::socket_client::SocketClient;
use proto::v1::{GetOfferRequest, GetStatusRequest, GetStatusResponse};
use regtest::Regtest;

use crate::setup::{Host, SocketSetup};
use crate::{binary, free_port, OUTLET};

/// `GetOffer` of `outlet_id` with a fresh nonce; the offer's signature and nonce checked
/// (`proto::identity::verify_offer`).
pub async fn signed_offer(
    client: &mut SocketClient<tonic::transport::Channel>,
    outlet_id: &str,
) -> anyhow::Result<proto::v1::Offer> {
    let nonce: [u8; 32] = bitcoin::secp256k1::rand::random();
    let signed = client
        .get_offer(GetOfferRequest {
            outlet_id: outlet_id.to_owned(),
            cable_nonce: nonce.to_vec(),
        })
        .await?
        .into_inner();
    Ok(proto::identity::verify_offer(&signed, outlet_id, &nonce)?)
}

/// A socket's config written by [`write_socket_config`], and the ports it listens on.
pub struct SocketConfigFile {
    /// The config file (`socket.toml`).
    pub config: PathBuf,
    /// `listen`: the cable-facing server.
    pub port: u16,
    /// `operator_listen`.
    pub operator_port: u16,
    /// `http_listen`.
    pub http_port: u16,
}

/// Write the config of `setup` for a socket of `bitcoind` to `dir/socket.toml`, on free ports.
pub fn write_socket_config(
    bitcoind: &Regtest,
    dir: &Path,
    setup: &SocketSetup,
) -> anyhow::Result<SocketConfigFile> {
    let port = free_port()?;
    let operator_port = free_port()?;
    let http_port = free_port()?;
    let config = dir.join("socket.toml");
    fs::create_dir_all(dir)?;
    let mut schemes = vec!["onchain", "single-fee"];
    if setup.lightning {
        schemes.push("lightning");
    }
    if setup.spillman {
        schemes.push("spillman");
    }
    // In a namespace: every address, reached at the host's (and the veth peer's) address.
    let (listen_ip, rpc_url) = match &setup.host {
        Some(host) => ("0.0.0.0", host.rpc_url.clone()),
        None => ("127.0.0.1", bitcoind.rpc_url()),
    };
    let mut text = format!(
        "network = \"regtest\"\nlisten = \"{listen_ip}:{port}\"\n\
         operator_listen = \"127.0.0.1:{operator_port}\"\n\
         http_listen = \"127.0.0.1:{http_port}\"\n{}\n\n\
         [chain]\nrpc_url = \"{rpc_url}\"\ncookie_file = \"{}\"\n",
        setup.top_toml,
        bitcoind.cookie_file().display(),
    );
    for number in 1..=setup.outlets.max(1) {
        text.push_str(&format!(
            "\n[[outlets]]\nid = \"outlet-{number}\"\nprice_msat_per_wh = {}\nquota_mwh = {}\n\
             quota_low_mwh = {}\ngrace_secs = {}\nlockout_secs = {}\npayment_timeout_secs = {}\n\
             single_fee_max_sat = {}\nsingle_fee_max_age_secs = {}\nschemes = {schemes:?}\n{}\n\n\
             [outlets.hw]\nkind = \"sim\"\ntime_scale = {:?}\nlink_debounce_ms = {}\n{}\n\n\
             [outlets.hw.load]\n{}\n",
            setup.price_msat_per_wh,
            setup.quota_mwh,
            setup.quota_low_mwh,
            setup.grace_secs,
            setup.lockout_secs,
            setup.payment_timeout_secs,
            setup.single_fee_max_sat,
            setup.single_fee_max_age_secs,
            setup.outlet_toml,
            setup.time_scale,
            setup.link_debounce_ms,
            setup.hw_toml,
            setup.load_toml,
        ));
    }
    fs::write(&config, text)?;
    if setup.lightning {
        let mut config_text = fs::read_to_string(&config)?;
        config_text.push_str(&format!(
            "\n[lightning]\nlisten = \"{}:{}\"\n",
            setup.lightning_ip.as_deref().unwrap_or("127.0.0.1"),
            free_port()?
        ));
        if let Some(alias) = &setup.lightning_alias {
            config_text.push_str(&format!("alias = {alias:?}\n"));
        }
        fs::write(&config, config_text)?;
    }
    Ok(SocketConfigFile {
        config,
        port,
        operator_port,
        http_port,
    })
}

/// A socket-node process.
pub struct SocketProcess {
    child: Option<Child>,
    /// gRPC endpoint.
    pub endpoint: String,
    /// gRPC endpoint of its operator API.
    pub operator: String,
    /// Base URL of its dashboard, JSON API and `/metrics` (`http_listen`), no trailing slash.
    pub http: String,
    /// Environment of the process, e.g. `FAILPOINTS` (read at each start).
    pub env: Vec<(String, String)>,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    port: u16,
    log: PathBuf,
    host: Option<Host>,
}

impl SocketProcess {
    /// Write the config of `setup` under `dir` and start the socket against `bitcoind`; returns
    /// once it answers `GetOffer`.
    pub fn start(bitcoind: &Regtest, dir: &Path, setup: &SocketSetup) -> anyhow::Result<Self> {
        let written = write_socket_config(bitcoind, dir, setup)?;
        let (config, port, operator_port, http_port) = (
            written.config,
            written.port,
            written.operator_port,
            written.http_port,
        );
        // In a namespace: reached at the host's (and the veth peer's) address.
        let reach_ip = match &setup.host {
            Some(host) => host.ip.as_str(),
            None => "127.0.0.1",
        };
        let mut socket = SocketProcess {
            child: None,
            endpoint: format!("http://{reach_ip}:{port}"),
            operator: format!("http://127.0.0.1:{operator_port}"),
            http: format!("http://127.0.0.1:{http_port}"),
            env: Vec::new(),
            data_dir: dir.join("socket-data"),
            config,
            port,
            log: dir.join("socket.log"),
            host: setup.host.clone(),
        };
        socket.spawn()?;
        Ok(socket)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let program = binary("socket-node")?;
        let mut command = match &self.host {
            Some(host) => host.command(&program),
            None => Command::new(program),
        };
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting socket-node")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("socket-node exited ({status}):\n{}", self.log_text());
            }
            let endpoint = self.endpoint.clone();
            let ready = runtime.block_on(async move {
                let mut client = SocketClient::connect(endpoint).await.ok()?;
                client
                    .get_offer(GetOfferRequest {
                        outlet_id: OUTLET.into(),
                        cable_nonce: vec![0; 32],
                    })
                    .await
                    .ok()
            });
            if ready.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "socket-node did not answer on port {}:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port of its gRPC endpoint (on every address when it runs in a namespace).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the socket logged.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL the process (a power cut), and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the process (as systemd stops a service) and wait for it to exit; its exit
    /// status. Errors: it is not running, or it ran on past `limit`.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("socket-node is not running")?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "socket-node ran on {limit:?} after SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start it again on the same port, config and data dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Run `socket-node <command> --operator <its operator API> <args>`; its stdout, or an
    /// error with its stderr.
    pub fn operator_cli(&self, command: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(binary("socket-node")?)
            .arg(command)
            .args(["--operator", &self.operator])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "socket-node {command} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the process is still running (not crashed or killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().is_ok_and(|status| status.is_none()))
    }

    /// Wait up to `limit` for the process to end by itself (a crash point: its client sees the
    /// connection drop a moment before the process is gone). Returns whether it ended.
    pub fn wait_for_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.is_running() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Append `text` to the socket's config file (read again on [`SocketProcess::restart`]);
    /// its last section is `[lightning]` when the socket has Lightning.
    pub fn append_config(&self, text: &str) -> anyhow::Result<()> {
        let mut config = fs::read_to_string(&self.config)?;
        config.push_str(text);
        fs::write(&self.config, config)?;
        Ok(())
    }

    /// `GetStatus` of the outlet.
    pub fn status(&self) -> anyhow::Result<GetStatusResponse> {
        self.status_of(OUTLET)
    }

    /// `GetStatus` of outlet `outlet_id`.
    pub fn status_of(&self, outlet_id: &str) -> anyhow::Result<GetStatusResponse> {
        let outlet_id = outlet_id.to_owned();
        self.call(|mut client| async move {
            Ok(client
                .get_status(GetStatusRequest { outlet_id })
                .await?
                .into_inner())
        })
    }

    /// The id of the session a status shows (it shows only the id's hash, design.md "Trust"),
    /// found in the socket's store as its operator would; `None` when it shows none.
    pub fn session_of(&self, status: &GetStatusResponse) -> anyhow::Result<Option<String>> {
        if status.session_hash.is_empty() {
            return Ok(None);
        }
        let db = rusqlite::Connection::open(self.data_dir.join("socket.sqlite"))?;
        let mut statement = db.prepare("SELECT id FROM sessions WHERE outlet_id = ?1")?;
        let ids = statement
            .query_map([&status.outlet_id], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ids
            .into_iter()
            .find(|id| proto::identity::session_hash(id) == status.session_hash))
    }

    /// The socket as a cable addresses its signed requests to it (socket.proto `RequestAuth`):
    /// its identity key, read from its data dir, on regtest.
    pub fn recipient(&self) -> proto::request_auth::Recipient {
        let keys =
            wallet::keys::NodeKeys::load_or_create(&self.data_dir, bitcoin::Network::Regtest)
                .expect("the socket's keys, created at its start");
        proto::request_auth::Recipient {
            socket_identity_key: keys.identity_key().inner,
            network: proto::v1::Network::Regtest,
        }
    }

    /// The offer of the outlet, its signature checked.
    pub fn offer(&self) -> anyhow::Result<proto::v1::Offer> {
        self.call(|mut client| async move { signed_offer(&mut client, OUTLET).await })
    }

    /// Run one gRPC exchange with the socket on a runtime of its own.
    fn call<T, F>(
        &self,
        exchange: impl FnOnce(SocketClient<tonic::transport::Channel>) -> F,
    ) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        let endpoint = self.endpoint.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move { exchange(SocketClient::connect(endpoint).await?).await })
    }
}

impl Drop for SocketProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
