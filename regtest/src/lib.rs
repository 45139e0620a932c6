//! Real Bitcoin Core on regtest for t2t's tests, demo and manual use (design.md, "Regtest
//! bitcoind (facts)").
//!
//! - [`bitcoind_exe`]: a `bitcoind` to run, built from source once per machine when none is found.
//! - [`Regtest`]: a throwaway node for one test (temp datadir, free ports, no wallet,
//!   `-txindex`), with [`Regtest::mine`] and [`Regtest::fund`]; stopped and deleted on drop, also
//!   when the test panics.
//! - [`free_port`]: a port for a node under test to listen on.
//! - [`daemon`]: a persistent node under a data dir, behind the `regtest` binary's
//!   `up` / `status` / `mine` / `fund` / `down`.

#![deny(missing_docs)]

pub mod daemon;
pub mod exe;
pub mod faucet;
pub mod ports;

use std::path::{Path, PathBuf};

use bitcoin::{Address, Amount, BlockHash, OutPoint};
pub use corepc_node::client::client_sync::Auth;
pub use corepc_node::Client;

pub use crate::exe::bitcoind_exe;
pub use crate::faucet::{parse_regtest_address, rpc, scan_utxos, Faucet, Utxo};
pub use crate::ports::free_port;

/// Arguments every node we start gets: regtest, RPC on loopback only, a transaction index,
/// and room for many RPC clients at once (a benchmark's swarm of cables syncs its wallets
/// together; bitcoind's default work queue of 64 would refuse some).
/// (P2P listening is off too: `-listen=0`, which also keeps bitcoind off the Tor port.)
pub const NODE_ARGS: [&str; 6] = [
    "-regtest",
    "-txindex=1",
    "-rpcbind=127.0.0.1",
    "-rpcallowip=127.0.0.1",
    "-rpcthreads=16",
    "-rpcworkqueue=4096",
];

/// Everything that can go wrong with a regtest node.
#[derive(Debug, thiserror::Error)]
pub enum RegtestError {
    /// A build tool or library for bitcoind is missing.
    #[error("{what} is missing to build bitcoind; install it with: apt-get install {apt}")]
    MissingTool {
        /// What is missing.
        what: String,
        /// The Debian packages that provide everything the build needs.
        apt: &'static str,
    },
    /// A step of the bitcoind build failed.
    #[error("building bitcoind failed at {step}:\n{log_tail}")]
    Build {
        /// The step that failed.
        step: String,
        /// The end of its output.
        log_tail: String,
    },
    /// An RPC call failed.
    #[error("bitcoind RPC {method}: {message}")]
    Rpc {
        /// The RPC method.
        method: String,
        /// What bitcoind or the transport said.
        message: String,
    },
    /// An address cannot be used on regtest.
    #[error("bad address {address}: {reason}")]
    BadAddress {
        /// The address as given.
        address: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An amount cannot be paid.
    #[error("bad amount: {0}")]
    BadAmount(String),
    /// A persistent node is already running under the data dir.
    #[error(
        "a regtest node is already up under {data_dir} (RPC {rpc_url}); run `regtest down` first"
    )]
    AlreadyUp {
        /// The data dir.
        data_dir: PathBuf,
        /// Its RPC endpoint.
        rpc_url: String,
    },
    /// No persistent node is running under the data dir.
    #[error("no regtest node is up under {0}; start one with `regtest up`")]
    NotUp(PathBuf),
    /// Starting, reaching or stopping the node failed.
    #[error("{0}")]
    Node(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A throwaway regtest bitcoind: temp datadir, free RPC port, killed and deleted on drop.
pub struct Regtest {
    node: corepc_node::Node,
    faucet: Faucet,
}

impl Regtest {
    /// Start a node (finding or building bitcoind first, see [`bitcoind_exe`]) and wait until
    /// its RPC answers. The chain starts empty at height 0.
    pub fn start() -> Result<Self, RegtestError> {
        Self::start_with(&[])
    }

    /// [`Regtest::start`] with `overrides` in place of the [`NODE_ARGS`] of the same name
    /// (`-txindex=0`: a node without a transaction index, as on a pruned Raspberry Pi), or
    /// added.
    pub fn start_with(overrides: &[&'static str]) -> Result<Self, RegtestError> {
        let exe = bitcoind_exe()?;
        let mut conf = corepc_node::Conf::default();
        let name = |arg: &str| arg.split('=').next().unwrap_or(arg).to_owned();
        conf.args = NODE_ARGS
            .iter()
            .copied()
            .filter(|arg| overrides.iter().all(|o| name(o) != name(arg)))
            .chain(overrides.iter().copied())
            .collect();
        conf.wallet = None;
        let node = corepc_node::Node::with_conf(&exe, &conf)
            .map_err(|e| RegtestError::Node(format!("starting {} failed: {e:#}", exe.display())))?;
        Ok(Regtest {
            node,
            faucet: Faucet::generate(),
        })
    }

    /// The RPC client (cookie auth).
    pub fn client(&self) -> &Client {
        &self.node.client
    }

    /// RPC endpoint, e.g. `http://127.0.0.1:18443`.
    pub fn rpc_url(&self) -> String {
        self.node.rpc_url()
    }

    /// The cookie file that authenticates RPC clients.
    pub fn cookie_file(&self) -> &Path {
        &self.node.params.cookie_file
    }

    /// The faucet that receives mined blocks and pays [`Regtest::fund`].
    pub fn faucet(&self) -> &Faucet {
        &self.faucet
    }

    /// Height of the chain tip.
    pub fn height(&self) -> Result<u32, RegtestError> {
        rpc(self.client(), "getblockcount", &[])
    }

    /// Mine `blocks` blocks to the faucet.
    pub fn mine(&self, blocks: u32) -> Result<Vec<BlockHash>, RegtestError> {
        self.faucet
            .mine_to(self.client(), blocks, self.faucet.address())
    }

    /// Mine `blocks` blocks paying their coinbase to `to`.
    pub fn mine_to(&self, blocks: u32, to: &Address) -> Result<Vec<BlockHash>, RegtestError> {
        self.faucet.mine_to(self.client(), blocks, to)
    }

    /// Pay exactly `amount` to `to` in a confirmed transaction (see [`Faucet::fund`]).
    pub fn fund(&self, to: &Address, amount: Amount) -> Result<OutPoint, RegtestError> {
        self.faucet.fund(self.client(), to, amount)
    }

    /// Pay each payee its amount in one confirmed transaction (see [`Faucet::fund_many`]).
    pub fn fund_many(&self, payees: &[(Address, Amount)]) -> Result<Vec<OutPoint>, RegtestError> {
        self.faucet.fund_many(self.client(), payees)
    }

    /// The unspent outputs paying `address` ([`scan_utxos`]).
    pub fn utxos(&self, address: &Address) -> Result<Vec<Utxo>, RegtestError> {
        scan_utxos(self.client(), address)
    }

    /// bitcoind's datadir (deleted on drop).
    pub fn datadir(&self) -> PathBuf {
        self.node.workdir()
    }
}

impl Drop for Regtest {
    /// Stop bitcoind through RPC and wait for it to exit, so no process outlives the test; the
    /// inner node then deletes the datadir.
    fn drop(&mut self) {
        let _ = self.node.stop();
    }
}
