//! The cable's TOML config (`cable-node run --config FILE`); flags override it.

use std::path::Path;

use bitcoin::Network;
use serde::Deserialize;
use wallet::chain::ChainConfig;

use crate::policy::Policy;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CableConfig {
    /// Bitcoin network: `regtest`, `signet`, `testnet`, `bitcoin`.
    pub network: Network,
    /// gRPC endpoint of the socket on the power-line link.
    #[serde(default = "default_socket")]
    pub socket: String,
    /// Outlet of the socket to draw from.
    #[serde(default = "default_outlet")]
    pub outlet_id: String,
    /// Where bitcoind is (through the socket's router in the field).
    pub chain: ChainConfig,
    /// What the cable may pay.
    pub policy: Policy,
    /// How a session runs.
    #[serde(default)]
    pub session: SessionConfig,
    /// The cable's Lightning node, for the `lightning` scheme.
    #[serde(default)]
    pub lightning: crate::lightning::CableLightning,
    /// The relay to the appliance and the cable's own meter (`kind = "sim"` or `"rpi"`). The
    /// default simulator has no meter: give it the appliance's `load` for one.
    #[serde(default)]
    pub hw: hw::cable::CableHwConfig,
}

fn default_socket() -> String {
    "http://127.0.0.1:50051".into()
}
fn default_outlet() -> String {
    "outlet-1".into()
}

/// How a session runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Unplug once the appliance has drawn power and then nothing for this long (real secs).
    #[serde(default = "default_idle")]
    pub unplug_when_idle_secs: f64,
    /// How long to keep trying to reach a socket that went away mid-session (real secs).
    #[serde(default = "default_reconnect")]
    pub reconnect_secs: u64,
}

fn default_idle() -> f64 {
    2.0
}
fn default_reconnect() -> u64 {
    30
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            unplug_when_idle_secs: default_idle(),
            reconnect_secs: default_reconnect(),
        }
    }
}

impl CableConfig {
    /// Read and check a config file. Errors name the file and the bad field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}
