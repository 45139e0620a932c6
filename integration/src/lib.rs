//! Harness for cross-process scenarios: a regtest bitcoind, `socket-node` and `cable-node` as
//! real processes on 127.0.0.1, their configs, logs and stores. Used by the demo and the tests.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod by_hand;
mod cable_files;
mod fake_socket;
mod ln_nodes;
mod miner;
mod setup;
mod socket_process;
mod stores;

pub use by_hand::{cable_signer, funded_payer, pay_a_quota_by_hand, PaidByHand, Payer};
pub use cable_files::{funding_address, CableFiles};
pub use fake_socket::{
    fake_paid_and_quota_low, fake_public_key, fake_signed_offer, fake_signed_status, serve_fake,
    watch_stream, Fake, FakeWatchStream,
};
pub use ln_nodes::{fund_ln_node, ln_node};
pub use miner::Miner;
pub use setup::{CableSetup, Host, SocketSetup};
pub use socket_process::{signed_offer, write_socket_config, SocketConfigFile, SocketProcess};
pub use stores::{query_i64, query_pairs};

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

pub use regtest::free_port;

/// Wait until `done`, failing after `limit` with what was awaited.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
