//! Transactions of the `spillman` payment channel (seed 003, "Micropayment Channel Protocol"
//! steps 4–17 and "Protocol Peculiarities"; design.md `spillman`), one implementation for both
//! nodes.
//!
//! A [`Channel`] is fixed when it opens: both keys, the deposit outpoint and value, the refund's
//! lock height, the fee every channel transaction pays, and where the cable's and the socket's
//! money goes. From these the refund and every payment are *derived*, never negotiated: each
//! side builds the transaction it expects and compares, so a message can only match or be
//! refused. The deposit output is the P2WSH of the miniscript descriptor
//! `wsh(multi(2,cable,socket))` (BIP 141/143); signatures are ECDSA over the BIP 143 sighash
//! with `SIGHASH_ALL`; witnesses are built by miniscript's satisfier.
//!
//! - The **refund** spends the deposit back to the cable, `nLockTime` = the lock height (BIP 65
//!   semantics of an absolute lock time; the input's sequence enables it). The socket signs it
//!   before it sees the signed deposit (step 7).
//! - A **payment** spends the deposit: `to_socket` to the socket, the rest less the fee back to
//!   the cable (no change output below the dust limit: it goes to the fee). The cable signs each
//!   one a quota higher; the socket keeps the highest and co-signs it to close (step 16).

use bitcoin::{Amount, OutPoint, PublicKey, ScriptBuf};
use miniscript::Descriptor;

mod checks;
mod signing;
mod transactions;

/// Why a channel transaction or signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpillmanError {
    /// The refund's lock height is outside what the socket accepts.
    #[error("refund lock height {got} is outside {min}..={max}")]
    LockHeight {
        /// The lock height asked for.
        got: u32,
        /// Earliest accepted.
        min: u32,
        /// Latest accepted.
        max: u32,
    },
    /// The transaction is not the refund the channel's terms give.
    #[error("not the channel's refund: {0}")]
    Refund(String),
    /// The transaction is not the payment of that total the channel's terms give.
    #[error("not the channel's payment of {to_socket} to the socket: {reason}")]
    Payment {
        /// The total the payment should pay the socket.
        to_socket: Amount,
        /// What differs.
        reason: String,
    },
    /// The total is more than the deposit can pay after the fee, or below the dust limit.
    #[error(
        "{to_socket} to the socket is outside what the deposit of {deposit} pays ({min}..={max})"
    )]
    Total {
        /// The total asked for.
        to_socket: Amount,
        /// The deposit's value.
        deposit: Amount,
        /// The smallest payment (the dust limit of the socket's script).
        min: Amount,
        /// The deposit less the fee.
        max: Amount,
    },
    /// A signature that does not verify against the key and the transaction.
    #[error("bad signature by the {0}")]
    Signature(&'static str),
    /// The channel breaks the socket's offered terms (deposit, scripts, fee).
    #[error("{0}")]
    Terms(String),
    /// A key or descriptor miniscript refuses.
    #[error("descriptor: {0}")]
    Descriptor(String),
}

/// The terms of one channel, fixed when it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The cable's channel key (compressed).
    pub cable_key: PublicKey,
    /// The socket's channel key (compressed).
    pub socket_key: PublicKey,
    /// The deposit output.
    pub deposit: OutPoint,
    /// Its value.
    pub deposit_value: Amount,
    /// Block height from which the refund is valid (its `nLockTime`).
    pub refund_lock_height: u32,
    /// The fee of the refund and of every payment.
    pub fee: Amount,
    /// Where the refund and the cable's change go.
    pub cable_script: ScriptBuf,
    /// Where the socket's payments go.
    pub socket_script: ScriptBuf,
}

/// The deposit's descriptor, `wsh(multi(2,cable,socket))`.
pub fn deposit_descriptor(
    cable_key: &PublicKey,
    socket_key: &PublicKey,
) -> Result<Descriptor<PublicKey>, SpillmanError> {
    format!("wsh(multi(2,{cable_key},{socket_key}))")
        .parse()
        .map_err(|e: miniscript::Error| SpillmanError::Descriptor(e.to_string()))
}

/// Which side signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The cable (payer).
    Cable,
    /// The socket (payee).
    Socket,
}

impl Signer {
    fn name(self) -> &'static str {
        match self {
            Signer::Cable => "cable",
            Signer::Socket => "socket",
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod vectors;
