//! Harness for cross-process scenarios: a regtest bitcoind, `socket-node` and `cable-node` as
//! real processes on 127.0.0.1, their configs, logs and stores. Used by the demo and the tests.

#![deny(missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bitcoin::{Address, Amount, Network};
use proto::v1::socket_client::SocketClient;
use proto::v1::{GetOfferRequest, GetStatusRequest, GetStatusResponse};
use regtest::Regtest;
use wallet::keys::NodeKeys;
use wallet::onchain::NodeWallet;

/// The outlet every scenario uses.
pub const OUTLET: &str = "outlet-1";

/// Path of a workspace binary, built (once per process) with the profile of the running one
/// and the nodes' crash points (inactive unless `FAILPOINTS` names one).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/<profile>/deps/test-xxxx or target/<profile>/demo
            let mut dir = exe.parent().ok_or("no exe dir")?.to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            let release = dir.ends_with("release");
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .args([
                    "build",
                    "--quiet",
                    "--bin",
                    "socket-node",
                    "--bin",
                    "cable-node",
                    "--features",
                    "socket-node/failpoints,cable-node/failpoints",
                ])
                .arg("--manifest-path")
                .arg(manifest);
            if release {
                build.arg("--release");
            }
            let status = build
                .status()
                .map_err(|e| format!("running cargo build: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build of the nodes failed: {status}"));
            }
            Ok(dir)
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(dir.join(name))
}

/// The public key (33 bytes, compressed) of the secret key `[byte; 32]`: a valid key for the
/// fake devices of the cheat tests (`byte` from 1).
pub fn fake_public_key(byte: u8) -> Vec<u8> {
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    SecretKey::from_slice(&[byte; 32])
        .expect("a secret key in range")
        .public_key(&Secp256k1::signing_only())
        .serialize()
        .to_vec()
}

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

/// The key pair of a fake socket's identity secret.
fn keypair(secret: &bitcoin::secp256k1::SecretKey) -> bitcoin::secp256k1::Keypair {
    bitcoin::secp256k1::Keypair::from_secret_key(
        &bitcoin::secp256k1::Secp256k1::signing_only(),
        secret,
    )
}

/// A fake socket's reply to `request`: `offer` with the request's nonce and outlet, its
/// identity key [`fake_public_key`]`(1)`, signed by it.
pub fn fake_signed_offer(
    mut offer: proto::v1::Offer,
    request: &GetOfferRequest,
) -> proto::v1::GetOfferResponse {
    let secret = bitcoin::secp256k1::SecretKey::from_slice(&[1; 32]).expect("in range");
    offer.socket_identity_key = fake_public_key(1);
    offer.cable_nonce = request.cable_nonce.clone();
    offer.outlet_id = request.outlet_id.clone();
    proto::identity::sign_offer(&offer, &keypair(&secret), Vec::new())
}

/// A fake socket's `status` of session `session_id` (empty for none) as a real socket sends it:
/// the session's hash, and the report signed by the key of [`fake_signed_offer`] with a rising
/// sequence.
pub fn fake_signed_status(
    mut status: proto::v1::GetStatusResponse,
    session_id: &str,
) -> proto::v1::GetStatusResponse {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let secret = bitcoin::secp256k1::SecretKey::from_slice(&[1; 32]).expect("in range");
    status.session_hash = proto::identity::session_hash(session_id);
    let report = proto::v1::StatusReport {
        socket_identity_key: fake_public_key(1),
        outlet_id: status.outlet_id.clone(),
        session_hash: status.session_hash.clone(),
        state: status.state,
        energy_used_mwh: status.energy_used_mwh,
        quota_remaining_mwh: status.quota_remaining_mwh,
        payments: status.payments,
        sequence: SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        time_unix_ms: 0,
    };
    status.signed = Some(proto::identity::sign_status(&report, &keypair(&secret)));
    status
}

/// What a fake socket sends once the first quota of `session_id` is paid: Paid with the
/// appliance drawing 1.3 kW, then QuotaLow (500 mWh left), so the cable pays the next quota.
pub fn fake_paid_and_quota_low(session_id: &str) -> [proto::v1::WatchStatusResponse; 2] {
    use proto::v1::watch_status_response::Event;
    let status = fake_signed_status(
        GetStatusResponse {
            outlet_id: OUTLET.into(),
            state: proto::v1::OutletState::Paid as i32,
            power_mw: 1_300_000,
            quota_remaining_mwh: 500,
            relay_closed: true,
            payments: 1,
            ..Default::default()
        },
        session_id,
    );
    let low = proto::v1::QuotaLow {
        quota_remaining_mwh: status.quota_remaining_mwh,
        power_mw: status.power_mw,
        signed: status.signed.clone(),
    };
    [
        proto::v1::WatchStatusResponse {
            event: Some(Event::Status(status)),
        },
        proto::v1::WatchStatusResponse {
            event: Some(Event::QuotaLow(low)),
        },
    ]
}

/// The signer of the hand-made cables of the tests: one identity key ([0x77; 32]) for the whole
/// test process, sequences rising across its sessions.
pub fn cable_signer() -> &'static cable_node::signer::RequestSigner {
    static SIGNER: OnceLock<cable_node::signer::RequestSigner> = OnceLock::new();
    SIGNER.get_or_init(|| {
        cable_node::signer::RequestSigner::new(
            bitcoin::secp256k1::SecretKey::from_slice(&[0x77; 32]).expect("in range"),
        )
    })
}

pub use regtest::free_port;

/// A node run inside a network namespace (`ip netns exec`), reached over a veth link instead
/// of loopback (the link tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The network namespace.
    pub netns: String,
    /// Where this test process reaches the node (a socket listens on every address).
    pub ip: String,
    /// bitcoind's RPC URL as the node sees it.
    pub rpc_url: String,
}

impl Host {
    /// `program` run inside the namespace.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }
}

/// Settings of a socket in a scenario.
#[derive(Debug, Clone)]
pub struct SocketSetup {
    /// Price of energy.
    pub price_msat_per_wh: u64,
    /// Energy of one quota.
    pub quota_mwh: u64,
    /// QuotaLow threshold.
    pub quota_low_mwh: u64,
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// `[hw.load]` as TOML, e.g. `kind = "toaster"`.
    pub load_toml: String,
    /// Outlet timers, on the outlet clock.
    pub grace_secs: u64,
    /// Lockout duration, on the outlet clock.
    pub lockout_secs: u64,
    /// Payment timeout, on the outlet clock.
    pub payment_timeout_secs: u64,
    /// Real ms the link may be gone before it counts as unplugged.
    pub link_debounce_ms: u64,
    /// single-fee: the socket's maximum per input set.
    pub single_fee_max_sat: u64,
    /// single-fee: real seconds after which an input set is broadcast.
    pub single_fee_max_age_secs: u64,
    /// Run a Lightning node and offer the `lightning` scheme.
    pub lightning: bool,
    /// `[lightning] alias`: a public node a hub can open an announced channel to.
    pub lightning_alias: Option<String>,
    /// The IP the Lightning node listens on and its offer names (`[lightning] listen`); `None`:
    /// 127.0.0.1. In a network namespace: the address peers reach it at over the link.
    pub lightning_ip: Option<String>,
    /// Offer the `spillman` scheme too.
    pub spillman: bool,
    /// How many outlets the socket has: `outlet-1`, `outlet-2`, ... all with these settings,
    /// each with its own simulated hardware.
    pub outlets: usize,
    /// More top-level settings of the config (TOML lines), e.g. `anchor_interval_secs = 1`.
    pub top_toml: String,
    /// More settings of every outlet (TOML lines), e.g. `max_power_w = 1000`.
    pub outlet_toml: String,
    /// More settings of every outlet's `[outlets.hw]` (TOML lines), e.g.
    /// `meter_error_percent = 10` for a socket whose meter over-counts.
    pub hw_toml: String,
    /// Run in a network namespace instead of on loopback.
    pub host: Option<Host>,
}

impl Default for SocketSetup {
    /// The paper's experiment: 8 Wh quotas of the toaster at 125 000 msat/Wh (1000 sat each).
    fn default() -> Self {
        SocketSetup {
            price_msat_per_wh: 125_000,
            quota_mwh: 8_000,
            quota_low_mwh: 0,
            time_scale: 20.0,
            load_toml: "kind = \"toaster\"".into(),
            grace_secs: 60,
            lockout_secs: 60,
            payment_timeout_secs: 120,
            link_debounce_ms: 1_000,
            single_fee_max_sat: 10_000,
            single_fee_max_age_secs: 3_600,
            lightning: false,
            lightning_alias: None,
            lightning_ip: None,
            spillman: false,
            outlets: 1,
            top_toml: String::new(),
            outlet_toml: String::new(),
            hw_toml: String::new(),
            host: None,
        }
    }
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
        let (listen_ip, reach_ip, rpc_url) = match &setup.host {
            Some(host) => ("0.0.0.0", host.ip.as_str(), host.rpc_url.clone()),
            None => ("127.0.0.1", "127.0.0.1", bitcoind.rpc_url()),
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

/// Settings of a cable in a scenario.
#[derive(Debug, Clone)]
pub struct CableSetup {
    /// Highest price accepted.
    pub max_price_msat_per_wh: u64,
    /// Session budget.
    pub max_session_sat: u64,
    /// Unplug after this much real idle time.
    pub unplug_when_idle_secs: f64,
    /// Schemes by preference.
    pub schemes: Vec<String>,
    /// `[lightning] hub`: `<node id>@<host:port>` of a hub to pay through.
    pub lightning_hub: Option<String>,
    /// `policy.spillman_lock_blocks`.
    pub spillman_lock_blocks: u32,
    /// The outlet the cable is plugged into.
    pub outlet_id: String,
    /// `[lightning] channel_sat`: the channel opened on the first visit (the config's default
    /// when `None`).
    pub lightning_channel_sat: Option<u64>,
    /// The cable's `[hw]` table as TOML lines (none when empty: no meter), e.g. a simulated
    /// meter of the socket's appliance.
    pub hw_toml: String,
    /// More `[policy]` lines, e.g. `meter_tolerance_percent = 50`.
    pub policy_toml: String,
    /// Run in a network namespace instead of on loopback (its `ip` is not used).
    pub host: Option<Host>,
}

impl Default for CableSetup {
    fn default() -> Self {
        CableSetup {
            max_price_msat_per_wh: 200_000,
            max_session_sat: 100_000,
            unplug_when_idle_secs: 1.0,
            schemes: vec!["onchain".into()],
            lightning_hub: None,
            spillman_lock_blocks: 144,
            outlet_id: OUTLET.into(),
            lightning_channel_sat: None,
            hw_toml: String::new(),
            policy_toml: String::new(),
            host: None,
        }
    }
}

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

/// Mines a block every `every` on a thread until dropped, as a live chain would.
pub struct Miner(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<()>>,
);

impl Miner {
    /// Start mining on `bitcoind` every `every`.
    pub fn start(bitcoind: &Regtest, every: Duration) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let running = std::sync::Arc::new(AtomicBool::new(true));
        let (url, cookie) = (bitcoind.rpc_url(), bitcoind.cookie_file().to_owned());
        let address = bitcoind.faucet().address().to_string();
        let flag = std::sync::Arc::clone(&running);
        let handle = std::thread::spawn(move || {
            let Ok(client) =
                regtest::Client::new_with_auth(&url, regtest::Auth::CookieFile(cookie))
            else {
                return;
            };
            while flag.load(Ordering::SeqCst) {
                std::thread::sleep(every);
                let _ = client.call::<serde_json::Value>(
                    "generatetoaddress",
                    &[serde_json::json!(1), serde_json::json!(address)],
                );
            }
        });
        Miner(running, Some(handle))
    }
}

impl Drop for Miner {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(handle) = self.1.take() {
            let _ = handle.join();
        }
    }
}

/// Wait until `done`, failing after `limit` with what was awaited.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A wallet a test pays from by hand, as a cheating cable would.
pub struct Payer {
    /// The wallet.
    pub wallet: NodeWallet,
    /// Its bitcoind.
    pub chain: wallet::chain::Chain,
    _dir: tempfile::TempDir,
}

/// A fresh wallet funded with `coins` confirmed coins of `sats` each, synced.
pub fn funded_payer(bitcoind: &Regtest, coins: u32, sats: u64) -> Payer {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = NodeKeys::load_or_create(dir.path(), Network::Regtest).expect("keys");
    let mut wallet = NodeWallet::open(dir.path(), &keys).expect("wallet");
    for index in 0..coins {
        let address = wallet.receive_address(index).expect("address");
        bitcoind
            .fund(&address, Amount::from_sat(sats))
            .expect("funding");
    }
    let chain = wallet::chain::Chain::connect(
        &wallet::chain::ChainConfig {
            rpc_url: bitcoind.rpc_url(),
            cookie_file: bitcoind.cookie_file().to_owned(),
        },
        Network::Regtest,
    )
    .expect("bitcoind");
    wallet.sync(&chain).expect("sync");
    Payer {
        wallet,
        chain,
        _dir: dir,
    }
}

/// One `onchain` quota a hand-made cable (the test signer, `payer`'s wallet) paid and the
/// socket credited ([`pay_a_quota_by_hand`]); the link stays open while this lives.
pub struct PaidByHand {
    /// The session the payment opened.
    pub session_id: String,
    /// Its payment id.
    pub payment_id: u64,
    /// The payment, as the socket credited it.
    pub tx: bitcoin::Transaction,
    /// The coins it spends.
    pub inputs: Vec<bitcoin::OutPoint>,
    /// What it pays the socket.
    pub amount: Amount,
    /// Its fee.
    pub fee: Amount,
    _link: tonic::Streaming<proto::v1::WatchStatusResponse>,
}

impl PaidByHand {
    /// A transaction spending the same coins back to `payer` at 3000 sat more fee: the
    /// replacement a cheating cable sends (full RBF), not yet broadcast.
    pub fn spent_back(&self, payer: &mut Payer) -> bitcoin::Transaction {
        let own = payer
            .wallet
            .receive_address(7)
            .expect("address")
            .script_pubkey();
        payer
            .wallet
            .pay_from(
                &self.inputs,
                &own,
                self.amount,
                self.fee + Amount::from_sat(3_000),
            )
            .expect("a replacement")
            .tx
    }
}

/// Plug a hand-made cable into [`OUTLET`] of `socket` (`WatchStatus`), open an `onchain`
/// session signed by [`cable_signer`] and pay its first quota from `payer`'s coin (2 sat/vB);
/// panics unless the socket credits it (outlet `Paid`).
pub fn pay_a_quota_by_hand(
    runtime: &tokio::runtime::Runtime,
    socket: &SocketProcess,
    payer: &mut Payer,
) -> PaidByHand {
    use proto::v1;
    let to = socket.recipient();
    let mut client = runtime
        .block_on(SocketClient::connect(socket.endpoint.clone()))
        .expect("the socket");
    let link = runtime
        .block_on(client.watch_status(cable_signer().sign(
            &to,
            v1::WatchStatusRequest {
                outlet_id: OUTLET.into(),
                auth: None,
            },
        )))
        .expect("WatchStatus")
        .into_inner();
    let terms = runtime
        .block_on(client.power_request(cable_signer().sign(
            &to,
            v1::PowerRequestRequest {
                outlet_id: OUTLET.into(),
                scheme: v1::Scheme::Onchain as i32,
                ..Default::default()
            },
        )))
        .expect("terms")
        .into_inner();
    let payout = bitcoin::ScriptBuf::from_bytes(terms.payout_script.clone());
    let amount = Amount::from_sat(terms.amount_msat / 1_000);
    let rate = bitcoin::FeeRate::from_sat_per_vb(2).expect("a fee rate");
    let (inputs, fee) = payer
        .wallet
        .plan_input_set(&payout, amount, rate, Amount::from_sat(5_000))
        .expect("coins");
    let signed = payer
        .wallet
        .pay_from(&inputs, &payout, amount, fee)
        .expect("a payment");
    let paid = runtime
        .block_on(client.pay_transaction(cable_signer().sign(
            &to,
            v1::PayTransactionRequest {
                session_id: terms.session_id.clone(),
                payment_id: terms.payment_id,
                psbt: signed.psbt.serialize(),
                auth: None,
            },
        )))
        .expect("credited")
        .into_inner();
    assert_eq!(paid.state, v1::OutletState::Paid as i32, "{paid:?}");
    PaidByHand {
        session_id: terms.session_id,
        payment_id: terms.payment_id,
        tx: signed.tx,
        inputs,
        amount,
        fee,
        _link: link,
    }
}

/// A `WatchStatus` stream for a hand-made socket: every event sent on `events` from now on,
/// until the cable hangs up.
pub fn watch_stream(
    events: &tokio::sync::broadcast::Sender<proto::v1::WatchStatusResponse>,
) -> tokio_stream::wrappers::ReceiverStream<Result<proto::v1::WatchStatusResponse, tonic::Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut events = events.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Start a bare Lightning node (a hub, or a hand-made cable or socket) on its own seed under
/// `dir`, against `bitcoind`, with `settings`.
pub fn ln_node(
    bitcoind: &Regtest,
    dir: &Path,
    settings: &ln::LnSettings,
) -> std::sync::Arc<ln::ldk_node::Node> {
    fs::create_dir_all(dir).expect("the node's dir");
    let keys = NodeKeys::load_or_create(dir, Network::Regtest).expect("the node's seed");
    let chain = wallet::chain::ChainConfig {
        rpc_url: bitcoind.rpc_url(),
        cookie_file: bitcoind.cookie_file().to_owned(),
    };
    ln::start_node(dir, &keys, &chain, settings).expect("the Lightning node starts")
}

/// Fund the on-chain wallet of a Lightning node with `amount` (confirmed) and wait until it is
/// spendable.
pub fn fund_ln_node(bitcoind: &Regtest, node: &ln::ldk_node::Node, amount: Amount) {
    let address = node.onchain_payment().new_address().expect("an address");
    let address = Address::from_script(&address.script_pubkey(), Network::Regtest)
        .expect("a regtest address");
    bitcoind.fund(&address, amount).expect("the faucet pays");
    wait_until("the Lightning deposit", Duration::from_secs(30), || {
        node.sync_wallets().is_ok()
            && node.list_balances().spendable_onchain_balance_sats >= amount.to_sat()
    });
}

/// The one integer the query `sql` returns from the SQLite store `db` (read only), e.g. a
/// `COUNT(*)` of a node's store.
pub fn query_i64(db: &Path, sql: &str) -> i64 {
    let db = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("opening the store");
    db.query_row(sql, [], |r| r.get(0)).expect("the query")
}

/// The `(text, integer)` rows the query `sql` returns from the SQLite store `db` (read only),
/// e.g. a node's `(session_id, payment_id)` pairs.
pub fn query_pairs(db: &Path, sql: &str) -> std::collections::BTreeSet<(String, i64)> {
    let db = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("opening the store");
    let mut statement = db.prepare(sql).expect("the query");
    let rows = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("the query");
    rows.map(|row| row.expect("a row")).collect()
}
