//! The seller side of each payment scheme (design.md "Payment schemes"; paper seed 000 §V,
//! §VI), and what they share: the checks against the chain and the lockout of a cheater.
//!
//! Every payment is hostile until checked. One that breaks a rule is refused with the reason and
//! locks the outlet out; one that passes is persisted before it is credited.

pub mod lightning;
pub mod onchain;
pub mod single_fee;
pub mod spillman;

use bitcoin::{Amount, Transaction};
use tonic::Status;

use crate::node::SocketNode;

/// Why a payment was refused: the cable's fault (lock out) or ours (do not).
pub(crate) enum Refusal {
    /// The payment breaks a rule: refuse and lock out.
    Cheat(String),
    /// We could not check it (bitcoind down, store error): refuse without blame.
    Unavailable(String),
}

/// Lock the outlet out for a refused payment, record why, and build the error reply.
pub(crate) fn lock_out(node: &SocketNode, session_id: &str, reason: &str) -> Status {
    tracing::warn!(session = %session_id, %reason, "payment refused: lockout");
    let mut inner = node.inner();
    let events = inner.outlet.lock_out(reason, node.clock.now_ms());
    let _ = node.store().audit(
        &node.config.outlet.id,
        Some(session_id),
        "payment-refused",
        reason,
    );
    node.apply(&mut inner, events);
    Status::permission_denied(format!("payment refused, outlet locked out: {reason}"))
}

/// Checks against the chain: every input unspent on this chain, bitcoind would accept the
/// transaction, the fee rate is at least the minimum. Returns the fee and vsize.
pub(crate) fn check_on_chain(
    node: &SocketNode,
    tx: &Transaction,
) -> Result<(Amount, u64), Refusal> {
    let unavailable = |e: wallet::WalletError| Refusal::Unavailable(e.to_string());
    for input in &tx.input {
        if node
            .chain
            .unspent_value(input.previous_output)
            .map_err(unavailable)?
            .is_none()
        {
            return Err(Refusal::Cheat(format!(
                "input {} is not an unspent output on this {} chain (wrong network, never \
                 broadcast, or already spent)",
                input.previous_output, node.config.network
            )));
        }
    }
    let verdict = node.chain.test_mempool_accept(tx).map_err(unavailable)?;
    if !verdict.allowed {
        return Err(Refusal::Cheat(format!(
            "bitcoind refuses the transaction: {}",
            verdict.reject_reason
        )));
    }
    let min_rate = node.config.outlet.min_fee_rate_sat_per_vb;
    if verdict.fee.to_sat() < min_rate * verdict.vsize {
        return Err(Refusal::Cheat(format!(
            "fee {} for {} vB is below {min_rate} sat/vB",
            verdict.fee, verdict.vsize
        )));
    }
    Ok((verdict.fee, verdict.vsize))
}

/// Run the chain checks off the async threads; map a refusal to lockout or unavailability.
pub(crate) async fn checked_on_chain(
    node: &std::sync::Arc<SocketNode>,
    session_id: &str,
    tx: &Transaction,
) -> Result<(Amount, u64), Status> {
    let checked = {
        let node = std::sync::Arc::clone(node);
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || check_on_chain(&node, &tx))
            .await
            .map_err(internal)?
    };
    match checked {
        Ok(checked) => Ok(checked),
        Err(Refusal::Cheat(reason)) => Err(lock_out(node, session_id, &reason)),
        Err(Refusal::Unavailable(reason)) => Err(Status::unavailable(format!(
            "cannot check the payment now: {reason}"
        ))),
    }
}

/// An error of ours, as a gRPC status.
pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}
