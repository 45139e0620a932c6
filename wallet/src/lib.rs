//! Keys, wallet and chain access of a t2t node, shared by `socket-node` and `cable-node`.
//!
//! - [`keys`]: one BIP39 seed per node, created at first start in its data dir; the BIP 84
//!   descriptors and the node's identity key derive from it (one backup for everything).
//! - [`onchain`]: a BDK descriptor wallet persisted in SQLite, synced from bitcoind RPC
//!   (bdk_bitcoind_rpc, blocks only), that builds, checks and signs payments as PSBTs (BIP 174).
//! - [`chain`]: the bitcoind RPC calls a node relies on: network check, `testmempoolaccept`,
//!   `sendrawtransaction`, `gettxout`, confirmations.

#![deny(missing_docs)]

pub mod chain;
pub mod facts;
pub mod keys;
pub mod onchain;
pub mod persist;
pub mod sequence;

use std::path::PathBuf;

/// An error of the keys, the wallet or the chain.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The seed file is unreadable or malformed.
    #[error("seed {path}: {reason}")]
    Seed {
        /// The seed file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The BDK wallet or its SQLite store failed.
    #[error("wallet: {0}")]
    Wallet(String),
    /// The wallet cannot pay: too little money, or a fee above the cap.
    #[error("cannot pay: {0}")]
    CannotPay(String),
    /// bitcoind answered an RPC call with an error (it refuses a transaction, knows no such
    /// txid, ...).
    #[error("bitcoind RPC {method}: {message}")]
    Rpc {
        /// The RPC method.
        method: String,
        /// bitcoind's error code, when it gave one (Bitcoin Core `RPCErrorCode`: -5 is
        /// `RPC_INVALID_ADDRESS_OR_KEY`, "no such transaction"; -26 `RPC_VERIFY_REJECTED`).
        code: Option<i32>,
        /// What bitcoind said.
        message: String,
    },
    /// bitcoind did not answer an RPC call (unreachable, a broken connection, an answer that
    /// does not decode): the call may or may not have taken effect.
    #[error("bitcoind did not answer {method}: {message}")]
    Unreachable {
        /// The RPC method.
        method: String,
        /// What the transport said.
        message: String,
    },
    /// bitcoind runs another network than the node.
    #[error("bitcoind runs {got}, the node is configured for {expected}")]
    WrongChain {
        /// The node's network.
        expected: String,
        /// bitcoind's chain.
        got: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
