//! Seller side of the `onchain` scheme (paper seed 000 §V, Table I): one transaction per quota.
//! Checked, persisted, broadcast, then credited, in that order (a broadcast bitcoind does not
//! answer is credited too, and sent again by the chain watch).

use crate::error::SocketError;
use proto::rules::{check_onchain_payment, decode_payment, OnchainTerms};
use proto::v1;
use wallet::WalletError;

use super::{Credit, Issued, Seller, SellerContext, Verdict};
use crate::store::{PaymentStatus, StoredTerms};

/// The seller of `onchain`.
pub(crate) struct Onchain;

#[tonic::async_trait]
impl Seller for Onchain {
    async fn reply(
        &self,
        _cx: &SellerContext<'_>,
        issued: Issued,
    ) -> Result<v1::PowerRequestResponse, SocketError> {
        Ok(reply(issued))
    }

    async fn pay(
        &self,
        cx: &SellerContext<'_>,
        session_id: &str,
        payment_id: u64,
        psbt: &[u8],
        terms: StoredTerms,
    ) -> Verdict {
        pay(cx, session_id, payment_id, psbt, terms).await
    }
}

/// The `PowerRequest` reply for the issued terms.
fn reply(issued: Issued) -> v1::PowerRequestResponse {
    let terms = issued.terms;
    v1::PowerRequestResponse {
        session_id: issued.session_id,
        payment_id: issued.payment_id,
        scheme: v1::Scheme::Onchain as i32,
        amount_msat: terms.amount.to_sat() * 1_000,
        quota_mwh: terms.quota.0,
        payout_script: issued.payout_script.to_bytes(),
        terms: Some(v1::power_request_response::Terms::Onchain(
            v1::OnchainPaymentTerms {},
        )),
    }
}

/// Check, persist and broadcast one `onchain` payment; the caller credits it.
async fn pay(
    cx: &SellerContext<'_>,
    session_id: &str,
    payment_id: u64,
    psbt: &[u8],
    terms: StoredTerms,
) -> Verdict {
    let tx = decode_payment(psbt).map_err(|e| SocketError::Cheat(e.to_string()))?;
    let onchain_terms = OnchainTerms {
        payout_script: cx.session_payout(session_id)?,
        amount: terms.amount,
        quota: terms.quota,
    };
    check_onchain_payment(&tx, &onchain_terms).map_err(|e| SocketError::Cheat(e.to_string()))?;
    let checked = cx.checked_on_chain(&tx).await?;

    // Persist (within the cable's unconfirmed limit), then broadcast, then credit.
    let accepted =
        cx.shared
            .persist_within_unconfirmed_limit(session_id, terms.amount, |store| {
                store.accept_payment(session_id, payment_id, &tx, terms, &checked)
            })?;
    if !accepted {
        return Err(SocketError::wrong_state(
            "the session ended while its payment was checked: not taken",
        ));
    }
    let broadcast = {
        let tx = tx.clone();
        cx.with_chain_to_the_end(move |shared| {
            // Fault point for the tests: bitcoind never answers this broadcast.
            fail::fail_point!("socket-broadcast-unanswered", |_| Err(
                WalletError::Unreachable {
                    method: "sendrawtransaction".into(),
                    message: "failpoint".into(),
                }
            ));
            shared.chain.broadcast(&tx)
        })
        .await?
    };
    let txid = match broadcast {
        Ok(txid) => {
            cx.shared
                .store()
                .set_payment_status(session_id, payment_id, PaymentStatus::Broadcast)
                .map_err(SocketError::internal)?;
            txid
        }
        // No answer is no refusal: bitcoind took the payment a moment ago
        // (`testmempoolaccept`) and it is stored. Credited like any payment not yet final; the
        // chain watch sends it until bitcoind has it (design.md "Trust": no honest lockout).
        Err(WalletError::Unreachable { message, .. }) => {
            tracing::warn!(session = %session_id, payment_id, "bitcoind did not answer the broadcast ({message}): credited, the chain watch sends it again");
            tx.compute_txid()
        }
        Err(e) => {
            cx.shared
                .store()
                .set_payment_status(session_id, payment_id, PaymentStatus::Failed)
                .map_err(SocketError::internal)?;
            // Refused between the check and the broadcast: blame only on proof.
            return Err(match super::judge_reject(&e.to_string()) {
                super::Refusal::Cheat(reason) => {
                    SocketError::Cheat(format!("broadcast failed: {reason}"))
                }
                super::Refusal::Policy(reason) => {
                    SocketError::invalid(format!("payment not taken (no blame): {reason}"))
                }
                super::Refusal::Unavailable(reason) => SocketError::unavailable(reason),
            });
        }
    };
    Ok(Credit {
        quota: terms.quota,
        txid: txid.to_string(),
    })
}
