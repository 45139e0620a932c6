//! Seller side of the `onchain` scheme (paper seed 000 §V, Table I): one transaction per quota.
//! Checked, persisted, broadcast, then credited, in that order.

use std::sync::Arc;

use proto::rules::{check_onchain_payment, decode_payment, OnchainTerms};
use proto::v1::{self, OutletState};
use tonic::Status;

use super::{checked_on_chain, internal, lock_out};
use crate::node::SocketNode;
use crate::store::StoredTerms;

/// The terms of one quota: price × quota to the payout script.
pub(crate) fn new_terms(node: &SocketNode) -> StoredTerms {
    StoredTerms {
        amount: node.quota_amount(),
        quota: proto::units::EnergyMwh(node.config.outlet.quota_mwh),
        single_fee: None,
    }
}

/// The `PowerRequest` reply for `terms`.
pub(crate) fn reply(
    node: &SocketNode,
    session_id: String,
    payment_id: u64,
    terms: StoredTerms,
) -> v1::PowerRequestResponse {
    v1::PowerRequestResponse {
        session_id,
        payment_id,
        scheme: v1::Scheme::Onchain as i32,
        amount_msat: terms.amount.to_sat() * 1_000,
        quota_mwh: terms.quota.0,
        payout_script: node.payout_script.to_bytes(),
        ..Default::default()
    }
}

/// Check, persist, broadcast and credit one `onchain` payment.
pub(crate) async fn pay(
    node: &Arc<SocketNode>,
    session_id: &str,
    payment_id: u64,
    psbt: &[u8],
    terms: StoredTerms,
) -> Result<v1::PayTransactionResponse, Status> {
    let tx = decode_payment(psbt).map_err(|e| lock_out(node, session_id, &e.to_string()))?;
    let onchain_terms = OnchainTerms {
        payout_script: node.payout_script.clone(),
        amount: terms.amount,
        quota: terms.quota,
    };
    check_onchain_payment(&tx, &onchain_terms)
        .map_err(|e| lock_out(node, session_id, &e.to_string()))?;
    let (fee, vsize) = checked_on_chain(node, session_id, &tx).await?;

    // Persist, then broadcast, then credit.
    node.store()
        .accept_payment(session_id, payment_id, &tx, terms, fee, vsize)
        .map_err(internal)?;
    let broadcast = {
        let node = Arc::clone(node);
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || node.chain.broadcast(&tx))
            .await
            .map_err(internal)?
    };
    let txid = match broadcast {
        Ok(txid) => txid,
        Err(e) => {
            node.store()
                .set_payment_status(session_id, payment_id, "failed")
                .map_err(internal)?;
            return Err(lock_out(
                node,
                session_id,
                &format!("broadcast failed: {e}"),
            ));
        }
    };
    node.store()
        .set_payment_status(session_id, payment_id, "broadcast")
        .map_err(internal)?;
    node.credit(session_id, terms.quota, &txid.to_string())?;
    Ok(v1::PayTransactionResponse {
        txid: txid.to_string(),
        quota_credited_mwh: terms.quota.0,
        state: OutletState::Paid as i32,
    })
}
