//! The socket's TOML config (`socket-node run --config FILE`); flags override it.
//!
//! Durations of the outlet (grace, lockout, payment timeout) run on the outlet's clock, which
//! the simulator's `time_scale` speeds up together with the meter.

use std::net::SocketAddr;
use std::path::Path;

use bitcoin::Network;
use hw::load::LoadConfig;
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
    /// Where bitcoind is.
    pub chain: ChainConfig,
    /// The outlet and its prices.
    pub outlet: OutletConfig,
    /// Its hardware.
    #[serde(default)]
    pub hw: HwConfig,
    /// Its Lightning node, for the `lightning` scheme.
    pub lightning: Option<LightningConfig>,
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

fn default_listen() -> SocketAddr {
    "127.0.0.1:50051".parse().expect("constant")
}

/// One outlet: identity, price, quota, timers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutletConfig {
    /// Name of the outlet in the protocol.
    #[serde(default = "default_outlet_id")]
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
    /// Schemes offered: `onchain`, `single-fee`.
    #[serde(default = "default_schemes")]
    pub schemes: Vec<SchemeName>,
    /// single-fee: the most one input set may pay before it is broadcast; the socket's
    /// exposure to a cable that double-spends its inputs (paper §VI).
    #[serde(default = "default_single_fee_max")]
    pub single_fee_max_sat: u64,
    /// single-fee: an input set older than this (real seconds: the exposure to a double spend
    /// grows with wall-clock time, not with the simulator's) is broadcast and a new one started.
    #[serde(default = "default_single_fee_age")]
    pub single_fee_max_age_secs: u64,
    /// spillman: the channel terms the socket offers (seed 003).
    #[serde(default)]
    pub spillman: SpillmanConfig,
}

/// `[outlet.spillman]`: the channels the socket accepts (seed 003 "Protocol Peculiarities").
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

/// A payment scheme by its config name.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeName {
    /// One transaction per quota (paper §V).
    Onchain,
    /// Rising payments over the same inputs, one broadcast (paper §VI).
    SingleFee,
    /// BOLT11 invoices paid over Lightning channels.
    Lightning,
    /// A 2-of-2 deposit with a pre-signed timelocked refund, rising payments (seed 003).
    Spillman,
}

impl SchemeName {
    /// The name in configs and the store.
    pub fn name(self) -> &'static str {
        match self {
            SchemeName::Onchain => "onchain",
            SchemeName::SingleFee => "single-fee",
            SchemeName::Lightning => "lightning",
            SchemeName::Spillman => "spillman",
        }
    }

    /// The scheme on the wire.
    pub fn to_proto(self) -> proto::v1::Scheme {
        match self {
            SchemeName::Onchain => proto::v1::Scheme::Onchain,
            SchemeName::SingleFee => proto::v1::Scheme::SingleFee,
            SchemeName::Lightning => proto::v1::Scheme::Lightning,
            SchemeName::Spillman => proto::v1::Scheme::Spillman,
        }
    }
}

fn default_schemes() -> Vec<SchemeName> {
    vec![SchemeName::Onchain, SchemeName::SingleFee]
}
fn default_single_fee_max() -> u64 {
    10_000
}
fn default_single_fee_age() -> u64 {
    3_600
}

fn default_outlet_id() -> String {
    "outlet-1".into()
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
        }
    }
}

impl SocketConfig {
    /// Read and check a config file. Errors name the file and the bad field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let config: SocketConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config.check()?;
        Ok(config)
    }

    /// Reject settings no outlet can work with.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.operator_listen.ip().is_loopback(),
            "operator_listen = {} is not a loopback address: whoever reaches it can close the socket's channels (reach it from afar through an SSH tunnel)",
            self.operator_listen
        );
        anyhow::ensure!(self.outlet.quota_mwh > 0, "outlet.quota_mwh must be > 0");
        anyhow::ensure!(
            self.outlet.price_msat_per_wh > 0,
            "outlet.price_msat_per_wh must be > 0"
        );
        anyhow::ensure!(
            self.outlet.quota_low_mwh < self.outlet.quota_mwh,
            "outlet.quota_low_mwh must be below outlet.quota_mwh"
        );
        let amount = proto::rules::quota_amount(
            proto::units::PriceMsatPerWh(self.outlet.price_msat_per_wh),
            proto::units::EnergyMwh(self.outlet.quota_mwh),
        )?;
        anyhow::ensure!(
            amount.to_sat() >= self.outlet.min_payment_sat,
            "one quota costs {amount}, below outlet.min_payment_sat = {} sat: raise the price or the quota",
            self.outlet.min_payment_sat
        );
        if self.outlet.schemes.contains(&SchemeName::SingleFee) {
            anyhow::ensure!(
                self.outlet.single_fee_max_sat >= amount.to_sat(),
                "outlet.single_fee_max_sat = {} is below one quota ({amount})",
                self.outlet.single_fee_max_sat
            );
        }
        anyhow::ensure!(!self.outlet.schemes.is_empty(), "outlet.schemes is empty");
        anyhow::ensure!(
            !self.outlet.schemes.contains(&SchemeName::Lightning) || self.lightning.is_some(),
            "outlet.schemes has lightning but there is no [lightning] section"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
network = "regtest"
[chain]
rpc_url = "http://127.0.0.1:18443"
cookie_file = "/nonexistent/.cookie"
[outlet]
price_msat_per_wh = 125000
quota_mwh = 8000
"#;

    #[test]
    fn the_operator_api_stays_on_loopback() {
        let config: SocketConfig = toml::from_str(CONFIG).unwrap();
        assert_eq!(config.operator_listen, default_operator_listen());
        config.check().unwrap();
        let exposed: SocketConfig =
            toml::from_str(&format!("operator_listen = \"0.0.0.0:50052\"\n{CONFIG}")).unwrap();
        let error = exposed.check().unwrap_err().to_string();
        assert!(error.contains("not a loopback address"), "{error}");
    }
}
