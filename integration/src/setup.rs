//! The settings of a scenario's socket and cables, and the network namespace a node may run in.

use std::path::Path;
use std::process::Command;

use crate::OUTLET;

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
    pub(crate) fn command(&self, program: &Path) -> Command {
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
