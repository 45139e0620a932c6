//! The socket's TOML config (`socket-node run --config FILE`); flags override it.
//!
//! Durations of the outlet (grace, lockout, payment timeout) run on the outlet's clock, which
//! the simulator's `time_scale` speeds up together with the meter.

use std::net::SocketAddr;
use std::path::Path;

use bitcoin::Network;
use hw::load::LoadConfig;
use proto::Scheme;
use serde::Deserialize;
use wallet::chain::ChainConfig;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    /// Bitcoin network: `regtest`, `signet`, `testnet`, `bitcoin`.
    pub network: Network,
    /// Address of the gRPC server (the power-line link). Loopback by default.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the operator's gRPC server (`socket-node channels`, `close-channel`). Must be
    /// a loopback address: whoever reaches it can close the socket's channels.
    #[serde(default = "default_operator_listen")]
    pub operator_listen: SocketAddr,
    /// Address of the owner's web dashboard, its JSON API (`/api/v1/...`) and Prometheus
    /// `/metrics`, all behind the operator tokens. Must be a loopback address (plain HTTP:
    /// reach it from afar through an SSH tunnel).
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// Where bitcoind is.
    pub chain: ChainConfig,
    /// The outlets, `[[outlets]]`: each with its own id, prices, timers, schemes and hardware.
    /// One socket-node serves them all at once (a power strip, a row of pedestals).
    pub outlets: Vec<OutletConfig>,
    /// Operator keys (33-byte compressed, hex) whose signed registries of device identities
    /// `socket-node registry import` accepts (`operator.proto` `SignedRegistry`).
    #[serde(default)]
    pub registry_operator_keys: Vec<String>,
    /// How far a cable's metering receipt may fall behind the socket's count before it is the
    /// anomaly `meter-disagreement` (socket.proto `MeteringReceipt`, "Meter agreement"):
    /// percent of the cable's energy since the baseline, default 5.
    #[serde(default = "default_meter_tolerance_percent")]
    pub meter_tolerance_percent: u64,
    /// ... and absolute allowance on top, default 300 mWh.
    #[serde(default = "default_meter_tolerance_mwh")]
    pub meter_tolerance_mwh: u64,
    /// Every this many seconds, when rows were added to the audit log, its head is anchored
    /// on Bitcoin by a transaction of the socket's wallet with an `OP_RETURN` output (about
    /// 165 vbytes; [`crate::anchor`]); 0: never. The wallet needs coins: the socket's payouts.
    #[serde(default = "default_anchor_interval")]
    pub anchor_interval_secs: u64,
    /// Fee rate of an anchor transaction, sat/vB.
    #[serde(default = "default_anchor_fee_rate")]
    pub anchor_fee_rate_sat_per_vb: u64,
    /// The most an anchor may pay in fees, sat (an anchor that would pay more is not sent).
    #[serde(default = "default_anchor_max_fee_sat")]
    pub anchor_max_fee_sat: u64,
    /// At most this many bitcoind RPC calls run at once for payment checks, across outlets.
    #[serde(default = "default_max_chain_calls")]
    pub max_chain_calls: usize,
    /// A credited `onchain` payment is watched until it is this many blocks deep: one replaced
    /// by a conflicting transaction before then is found and recorded as lost.
    #[serde(default = "default_final_confirmations")]
    pub final_confirmations: u32,
    /// The most one cable identity may have credited and not yet final, over all its
    /// sessions: `onchain` payments not `final_confirmations` deep, single-fee sets held or not
    /// yet confirmed, spillman credit on a deposit not yet confirmed. Above it the socket
    /// answers `UNAVAILABLE` (no lockout) until blocks bury some. What a cable that replaces
    /// its payments can take at most.
    #[serde(default = "default_max_unconfirmed_sat")]
    pub max_unconfirmed_sat: u64,
    /// How long a cable identity that made the socket lose a payment (replaced, double-spent)
    /// is refused new sessions, in seconds; absent: for good.
    #[serde(default)]
    pub ban_secs: Option<u64>,
    /// `[limits]`: what one peer of the power-line link may ask of the cable-facing server.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Its Lightning node, for the `lightning` scheme (shared by every outlet).
    pub lightning: Option<LightningConfig>,
    /// Files of operators' certificates of this socket's identity (each a JSON
    /// [`proto::identity::CertificateFile`]), sent with every offer; cables whose policy trusts
    /// an operator rather than a socket key need one.
    #[serde(default)]
    pub certificates: Vec<std::path::PathBuf>,
}

fn default_max_unconfirmed_sat() -> u64 {
    50_000
}

fn default_final_confirmations() -> u32 {
    6
}

fn default_meter_tolerance_percent() -> u64 {
    proto::receipt::MeterTolerance::default().percent
}
fn default_meter_tolerance_mwh() -> u64 {
    proto::receipt::MeterTolerance::default().mwh
}
fn default_anchor_interval() -> u64 {
    3_600
}

fn default_anchor_fee_rate() -> u64 {
    2
}

fn default_anchor_max_fee_sat() -> u64 {
    5_000
}

fn default_max_chain_calls() -> usize {
    8
}

/// The socket's Lightning node (ldk-node), `[lightning]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LightningConfig {
    /// Address Lightning peers (cables, hubs) connect to.
    pub listen: SocketAddr,
    /// Cable node ids (hex) whose channels the socket uses before they confirm (zero-conf).
    #[serde(default)]
    pub trusted_peers_0conf: Vec<String>,
    /// How long an invoice stays payable.
    #[serde(default = "default_invoice_expiry")]
    pub invoice_expiry_secs: u32,
    /// Public name of the socket's Lightning node (at most 32 bytes). Set it to let a hub open
    /// an announced channel to the socket, so that cables with a channel to the hub pay without
    /// one of their own (LDK hubs forward to announced channels only). Unset: private node,
    /// each cable opens its own channel.
    #[serde(default)]
    pub alias: Option<String>,
    /// Credit keysends that carry the session record (the fast path, after a session's first
    /// quota is paid by invoice). A keysend is claimed by the Lightning node before it can be
    /// checked: one that does not fit a session is kept and not credited.
    #[serde(default = "default_true")]
    pub keysend: bool,
}

fn default_true() -> bool {
    true
}

fn default_invoice_expiry() -> u32 {
    600
}

fn default_operator_listen() -> SocketAddr {
    "127.0.0.1:50052".parse().expect("constant")
}

fn default_http_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("constant")
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:50051".parse().expect("constant")
}

/// One outlet, `[[outlets]]`: identity, price, quota, timers, schemes, hardware.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutletConfig {
    /// Name of the outlet in the protocol (`outlet_id` of every request); unique per socket.
    pub id: String,
    /// Price of energy.
    pub price_msat_per_wh: u64,
    /// Energy bought by one payment.
    pub quota_mwh: u64,
    /// `QuotaLow` is sent when the paid energy left falls to this (paper §III step 4).
    #[serde(default)]
    pub quota_low_mwh: u64,
    /// How long the relay stays closed after the quota is used up, waiting for the next payment.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
    /// How long a Lockout lasts before the outlet returns to Standby.
    #[serde(default = "default_lockout")]
    pub lockout_secs: u64,
    /// How long a session may wait for its first payment before Lockout.
    #[serde(default = "default_payment_timeout")]
    pub payment_timeout_secs: u64,
    /// Lowest fee rate accepted in a payment, sat/vB (Bitcoin Core's default minimum relay fee
    /// rate is 0.1 sat/vB; we ask for more so payments confirm).
    #[serde(default = "default_min_fee_rate")]
    pub min_fee_rate_sat_per_vb: u64,
    /// Smallest on-chain payment accepted (the dust limit of a P2WPKH output is 294 sat).
    #[serde(default = "default_min_payment")]
    pub min_payment_sat: u64,
    /// Schemes offered: `onchain`, `single-fee`, `spillman`, `lightning` ([`Scheme`]).
    #[serde(default = "default_schemes")]
    pub schemes: Vec<Scheme>,
    /// single-fee: the most one input set may pay before it is broadcast; the socket's
    /// exposure to a cable that double-spends its inputs (paper §VI).
    #[serde(default = "default_single_fee_max")]
    pub single_fee_max_sat: u64,
    /// single-fee: an input set older than this (real seconds: the exposure to a double spend
    /// grows with wall-clock time, not with the simulator's) is broadcast and a new one started.
    #[serde(default = "default_single_fee_age")]
    pub single_fee_max_age_secs: u64,
    /// spillman: the channel terms the socket offers (seed 003), `[outlets.spillman]`.
    #[serde(default)]
    pub spillman: SpillmanConfig,
    /// The outlet's rating, W: a session drawing more for a second is an anomaly (design.md
    /// "Attestation", seed 004): stored with its evidence, the cable flagged, the session
    /// halted (lockout). Absent: no limit.
    #[serde(default)]
    pub max_power_w: Option<u64>,
    /// The outlet's relay, meter and plug sensor, `[outlets.hw]`.
    #[serde(default)]
    pub hw: HwConfig,
}

/// `[limits]` on the cable-facing server (design.md "Trust"; [`crate::limits`]). A peer is one
/// connection's remote address; requests over a rate get `RESOURCE_EXHAUSTED`
/// (`ERROR_REASON_RATE_LIMITED`) and change nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections open at once; one more is closed when accepted.
    pub max_connections: usize,
    /// Connections open at once from one host (IP address).
    pub max_connections_per_host: usize,
    /// `WatchStatus` streams open at once from one host (IP address).
    pub max_watch_streams_per_host: usize,
    /// HTTP/2 streams (calls in progress, `WatchStatus` included) per connection.
    pub max_streams_per_connection: u32,
    /// Largest request message, in bytes (a PSBT or deposit transaction is far smaller).
    pub max_message_bytes: usize,
    /// A call that has not answered in this time is cancelled (`WatchStatus` streams are not
    /// bounded by it once open).
    pub request_timeout_secs: u64,
    /// HTTP/2 keepalive ping interval; a peer that does not answer within it is dropped.
    pub keepalive_secs: u64,
    /// Requests per second from one host (IP address), and the burst above it.
    pub peer_requests_per_sec: u32,
    /// See `peer_requests_per_sec`.
    pub peer_burst: u32,
    /// Signed requests per second from one cable identity, and the burst above it.
    pub identity_requests_per_sec: u32,
    /// See `identity_requests_per_sec`.
    pub identity_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4_096,
            max_connections_per_host: 64,
            max_watch_streams_per_host: 32,
            max_streams_per_connection: 16,
            max_message_bytes: 256 * 1024,
            request_timeout_secs: 60,
            keepalive_secs: 30,
            peer_requests_per_sec: 50,
            peer_burst: 100,
            identity_requests_per_sec: 20,
            identity_burst: 50,
        }
    }
}

/// `[outlets.spillman]`: the channels the socket accepts (seed 003 "Protocol Peculiarities").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpillmanConfig {
    /// Smallest deposit.
    pub min_deposit_sat: u64,
    /// The refund's lock height must be at least this many blocks above the tip.
    pub min_lock_blocks: u32,
    /// And at most this many: how long the cable may hold the socket's money hostage.
    pub max_lock_blocks: u32,
    /// The socket closes a channel at the latest this many blocks before its refund unlocks.
    pub close_margin_blocks: u32,
    /// Confirmations the deposit needs before payments from it are credited (0: at once,
    /// with the deposit at risk of a double spend until it confirms).
    pub min_confirmations: u32,
}

impl Default for SpillmanConfig {
    fn default() -> Self {
        SpillmanConfig {
            min_deposit_sat: 2_000,
            min_lock_blocks: 12,
            max_lock_blocks: 1_008,
            close_margin_blocks: 6,
            min_confirmations: 0,
        }
    }
}

fn default_schemes() -> Vec<Scheme> {
    vec![Scheme::Onchain, Scheme::SingleFee]
}
fn default_single_fee_max() -> u64 {
    10_000
}
fn default_single_fee_age() -> u64 {
    3_600
}

fn default_grace() -> u64 {
    30
}
fn default_lockout() -> u64 {
    60
}
fn default_payment_timeout() -> u64 {
    60
}
fn default_min_fee_rate() -> u64 {
    1
}
fn default_min_payment() -> u64 {
    546
}

/// The outlet's relay, meter and plug sensor.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HwConfig {
    /// The simulator. A cable counts as plugged in while it holds a `WatchStatus` stream (the
    /// power-line link exists only while plugged).
    Sim {
        /// Simulated seconds per real second.
        #[serde(default = "default_time_scale")]
        time_scale: f64,
        /// The appliance behind the cable.
        #[serde(default = "default_load")]
        load: LoadConfig,
        /// How long (real ms) the link may be gone before it counts as an unplug, so that a
        /// cable reconnecting (or a socket restarting) does not end the session.
        #[serde(default = "default_link_debounce")]
        link_debounce_ms: u64,
        /// A misbehaving meter, for tests and `demo --misbehave`: readings off by this many
        /// percent (+10 over-counts by 10 %). 0 for an honest socket.
        #[serde(default)]
        meter_error_percent: i32,
    },
    /// A Raspberry Pi (runs only when built with the `rpi` feature).
    Rpi(hw::rpi_config::RpiConfig),
}

fn default_link_debounce() -> u64 {
    3_000
}
fn default_time_scale() -> f64 {
    1.0
}
fn default_load() -> LoadConfig {
    LoadConfig::Toaster { batches: 1 }
}

impl Default for HwConfig {
    fn default() -> Self {
        HwConfig::Sim {
            time_scale: default_time_scale(),
            load: default_load(),
            link_debounce_ms: default_link_debounce(),
            meter_error_percent: 0,
        }
    }
}

impl SocketConfig {
    /// The meter tolerance of receipts.
    pub fn meter_tolerance(&self) -> proto::receipt::MeterTolerance {
        proto::receipt::MeterTolerance {
            percent: self.meter_tolerance_percent,
            mwh: self.meter_tolerance_mwh,
        }
    }

    /// Read and check a config file. Errors name the file and the bad field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let config = Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config.check()?;
        Ok(config)
    }

    /// Parse a config's text (not checked: see [`SocketConfig::check`]). A config of the
    /// one-outlet format (`[outlet]` and `[hw]`) is refused with how to convert it.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let value: toml::Table = toml::from_str(text)?;
        anyhow::ensure!(
            !value.contains_key("outlet") && !value.contains_key("hw"),
            "[outlet] and [hw] are now per outlet: rename [outlet] to [[outlets]] (with an `id`), \
             [outlet.spillman] to [outlets.spillman], and move [hw] and [hw.load] under it as \
             [outlets.hw] and [outlets.hw.load]"
        );
        Ok(toml::from_str(text)?)
    }

    /// Reject settings no outlet can work with. Errors name the outlet and the field.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.operator_listen.ip().is_loopback(),
            "operator_listen = {} is not a loopback address: whoever reaches it can close the socket's channels (reach it from afar through an SSH tunnel)",
            self.operator_listen
        );
        anyhow::ensure!(
            self.http_listen.ip().is_loopback(),
            "http_listen = {} is not a loopback address: the dashboard is plain HTTP and its tokens would cross the network in clear (reach it from afar through an SSH tunnel)",
            self.http_listen
        );
        anyhow::ensure!(
            !self.outlets.is_empty(),
            "no [[outlets]]: a socket needs at least one outlet"
        );
        anyhow::ensure!(self.max_chain_calls > 0, "max_chain_calls must be > 0");
        anyhow::ensure!(
            self.final_confirmations > 0,
            "final_confirmations must be > 0"
        );
        let mut ids = std::collections::HashSet::new();
        for outlet in &self.outlets {
            anyhow::ensure!(!outlet.id.is_empty(), "an outlet has an empty id");
            anyhow::ensure!(
                ids.insert(outlet.id.as_str()),
                "outlet id {:?} is used twice",
                outlet.id
            );
            outlet
                .check(self.lightning.is_some())
                .map_err(|e| anyhow::anyhow!("outlet {:?}: {e}", outlet.id))?;
        }
        Ok(())
    }
}

impl OutletConfig {
    /// The price of one quota on chain (price × quota, rounded up to whole sat).
    pub fn quota_amount(&self) -> anyhow::Result<bitcoin::Amount> {
        Ok(proto::rules::quota_amount(
            proto::units::PriceMsatPerWh(self.price_msat_per_wh),
            proto::units::EnergyMwh(self.quota_mwh),
        )?)
    }

    fn check(&self, has_lightning: bool) -> anyhow::Result<()> {
        anyhow::ensure!(self.quota_mwh > 0, "quota_mwh must be > 0");
        anyhow::ensure!(self.price_msat_per_wh > 0, "price_msat_per_wh must be > 0");
        anyhow::ensure!(
            self.quota_low_mwh < self.quota_mwh,
            "quota_low_mwh must be below quota_mwh"
        );
        let amount = self.quota_amount()?;
        anyhow::ensure!(
            amount.to_sat() >= self.min_payment_sat,
            "one quota costs {amount}, below min_payment_sat = {} sat: raise the price or the quota",
            self.min_payment_sat
        );
        if self.schemes.contains(&Scheme::SingleFee) {
            anyhow::ensure!(
                self.single_fee_max_sat >= amount.to_sat(),
                "single_fee_max_sat = {} is below one quota ({amount})",
                self.single_fee_max_sat
            );
        }
        anyhow::ensure!(!self.schemes.is_empty(), "schemes is empty");
        anyhow::ensure!(
            !self.schemes.contains(&Scheme::Lightning) || has_lightning,
            "schemes has lightning but there is no [lightning] section"
        );
        if self.schemes.contains(&Scheme::Spillman) {
            let spillman = &self.spillman;
            anyhow::ensure!(
                spillman.min_lock_blocks <= spillman.max_lock_blocks,
                "spillman.min_lock_blocks = {} is above max_lock_blocks = {}",
                spillman.min_lock_blocks,
                spillman.max_lock_blocks
            );
            // A channel whose refund unlocks within the close margin would be closed at once,
            // or (margin above the lock) never in time: the cable would take its refund.
            anyhow::ensure!(
                spillman.close_margin_blocks < spillman.min_lock_blocks,
                "spillman.close_margin_blocks = {} must be below min_lock_blocks = {}: the \
                 socket must close a channel before its refund unlocks",
                spillman.close_margin_blocks,
                spillman.min_lock_blocks
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spillman_close_margin_at_or_above_the_lock_is_refused() {
        let spillman = |margin: u32, min_lock: u32| {
            format!(
                "{CONFIG}schemes = [\"spillman\"]\n[outlets.spillman]\n\
                 close_margin_blocks = {margin}\nmin_lock_blocks = {min_lock}\n"
            )
        };
        SocketConfig::parse(&spillman(6, 12))
            .unwrap()
            .check()
            .unwrap();
        let error = SocketConfig::parse(&spillman(12, 12))
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(error.contains("close_margin_blocks"), "{error}");
    }

    const CONFIG: &str = r#"
network = "regtest"
[chain]
rpc_url = "http://127.0.0.1:18443"
cookie_file = "/nonexistent/.cookie"
[[outlets]]
id = "outlet-1"
price_msat_per_wh = 125000
quota_mwh = 8000
"#;

    #[test]
    fn the_operator_api_stays_on_loopback() {
        let config = SocketConfig::parse(CONFIG).unwrap();
        assert_eq!(config.operator_listen, default_operator_listen());
        config.check().unwrap();
        let exposed =
            SocketConfig::parse(&format!("operator_listen = \"0.0.0.0:50052\"\n{CONFIG}")).unwrap();
        let error = exposed.check().unwrap_err().to_string();
        assert!(error.contains("not a loopback address"), "{error}");
        assert_eq!(config.http_listen, default_http_listen());
        let dashboard =
            SocketConfig::parse(&format!("http_listen = \"192.168.1.2:8080\"\n{CONFIG}")).unwrap();
        let error = dashboard.check().unwrap_err().to_string();
        assert!(error.contains("http_listen"), "{error}");
    }

    #[test]
    fn outlets_have_their_own_hardware_and_unique_ids() {
        let two = format!(
            "{CONFIG}[outlets.hw]\nkind = \"sim\"\ntime_scale = 5.0\n\n\
             [[outlets]]\nid = \"outlet-2\"\nprice_msat_per_wh = 200000\nquota_mwh = 4000\n\
             schemes = [\"spillman\"]\n"
        );
        let config = SocketConfig::parse(&two).unwrap();
        config.check().unwrap();
        assert_eq!(config.outlets.len(), 2);
        assert!(
            matches!(config.outlets[0].hw, HwConfig::Sim { time_scale, .. } if time_scale == 5.0)
        );
        assert_eq!(config.outlets[1].schemes, vec![Scheme::Spillman]);
        let twice = SocketConfig::parse(&format!(
            "{CONFIG}[[outlets]]\nid = \"outlet-1\"\nprice_msat_per_wh = 1000\nquota_mwh = 1000\n"
        ))
        .unwrap();
        let error = twice.check().unwrap_err().to_string();
        assert!(error.contains("used twice"), "{error}");
    }

    #[test]
    fn the_one_outlet_format_is_refused_with_how_to_convert_it() {
        let old = CONFIG.replace("[[outlets]]\nid = \"outlet-1\"", "[outlet]");
        let error = SocketConfig::parse(&old).unwrap_err().to_string();
        assert!(error.contains("[[outlets]]"), "{error}");
    }

    #[test]
    fn the_documented_socket_config_loads() {
        let readme = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/configuration.md"
        ));
        let start = readme
            .find("```toml\nnetwork = ")
            .expect("docs/configuration.md shows a socket config");
        let text = &readme[start + "```toml\n".len()..];
        let text = &text[..text.find("```").expect("closed")];
        let config = SocketConfig::parse(text).unwrap();
        config.check().unwrap();
        assert_eq!(config.outlets.len(), 2);
    }
}
