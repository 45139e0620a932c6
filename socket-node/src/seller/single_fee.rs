//! Seller side of the `single-fee` scheme (paper seed 000 §VI, Table II, Fig. 4).
//!
//! Each input set is a [`SellerSet`]: the socket holds the latest transaction and broadcasts
//! only one per set: when the set is full, when the session ends, when the set is older than
//! its age limit, at start-up for any set held when it stopped, and at once (then Lockout) when
//! it sees the set's inputs spent elsewhere. Its exposure to a cheating cable is the held value,
//! at most the set's maximum. The set in progress of each outlet lives in [`crate::sets`],
//! under that outlet's lock.

use crate::error::SocketError;
use bitcoin::{Amount, ScriptBuf};
use proto::rules::decode_payment;
use proto::single_fee::{outpoints_to_proto, SellerSet, SetTerms};
use proto::v1;

use super::{Credit, Issued, Seller, SellerContext, Verdict};
use crate::config::OutletConfig;
use crate::sets::OpenSet;
use crate::shared::Shared;
use crate::store::{unix_ms, StoredTerms};

/// The seller of `single-fee`.
pub(crate) struct SingleFee;

#[tonic::async_trait]
impl Seller for SingleFee {
    fn new_terms(
        &self,
        shared: &Shared,
        config: &OutletConfig,
        payout: &ScriptBuf,
        session_id: &str,
        request: &v1::PowerRequestRequest,
    ) -> Result<StoredTerms, SocketError> {
        new_terms(shared, config, payout, session_id, request.max_amount_sat)
    }

    /// Terms of a set that closed meanwhile (full, aged, or broadcast at a restart) are not
    /// issued again: the next payment starts a new set.
    fn terms_still_valid(
        &self,
        shared: &Shared,
        config: &OutletConfig,
        session_id: &str,
        terms: &StoredTerms,
    ) -> bool {
        match terms.single_fee {
            None => true,
            Some((index, _)) => shared
                .sets
                .snapshot(&config.id)
                .is_some_and(|set| set.is(session_id, index)),
        }
    }

    async fn reply(
        &self,
        _cx: &SellerContext<'_>,
        issued: Issued,
    ) -> Result<v1::PowerRequestResponse, SocketError> {
        reply(
            issued.set,
            issued.session_id,
            issued.payment_id,
            issued.terms,
        )
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

/// The terms of the next payment of `session_id`, opening a new input set when none is open:
/// its maximum is the outlet's, or the cable's `cable_max_sat` when lower. Runs in the outlet's
/// task; takes the outlet's set lock, then the store's.
fn new_terms(
    shared: &Shared,
    config: &OutletConfig,
    payout_script: &ScriptBuf,
    session_id: &str,
    cable_max_sat: u64,
) -> Result<StoredTerms, SocketError> {
    let increment = config.quota_amount().map_err(SocketError::internal)?;
    let mut set = shared
        .sets
        .of(&config.id)
        .ok_or_else(|| SocketError::internal(format!("no set slot for outlet {}", config.id)))?;
    let open = set
        .as_ref()
        .is_some_and(|s| s.session_id == session_id && !s.seller.is_full());
    if !open {
        let store = shared.store();
        let index = store
            .last_set(session_id)
            .map_err(SocketError::internal)?
            .map_or(1, |s| s.index + 1);
        let socket_max = config.single_fee_max_sat;
        let max = Amount::from_sat(match cable_max_sat {
            0 => socket_max,
            cable => cable.min(socket_max),
        });
        if max < increment {
            return Err(SocketError::invalid(format!(
                "a maximum of {max} is below one payment of {increment}"
            )));
        }
        store
            .open_set(session_id, index, increment, max)
            .map_err(SocketError::internal)?;
        // A full set of the session not yet closed is closed by its last payment; any other
        // (a set of a session that ended) was closed with it.
        *set = Some(OpenSet {
            session_id: session_id.to_owned(),
            index,
            seller: SellerSet::new(SetTerms {
                payout_script: payout_script.clone(),
                increment,
                max,
            }),
            fee: None,
            opened_at_unix_ms: unix_ms(),
        });
        tracing::info!(outlet = %config.id, session = %session_id, set = index, %max, "input set opened");
    }
    let set = set.as_ref().expect("opened above");
    Ok(StoredTerms {
        amount: increment,
        quota: proto::units::EnergyMwh(config.quota_mwh),
        single_fee: Some((set.index, set.seller.next_value())),
    })
}

/// The `PowerRequest` reply for `terms`, with the set's maximum, inputs and fee; `set` is the
/// outlet's set in progress when the terms were issued.
fn reply(
    set: Option<OpenSet>,
    session_id: String,
    payment_id: u64,
    terms: StoredTerms,
) -> Result<v1::PowerRequestResponse, SocketError> {
    let (index, value) = terms.single_fee.expect("single-fee terms");
    let set = set
        .filter(|s| s.session_id == session_id && s.index == index)
        .ok_or_else(|| {
            SocketError::InputSetClosed("the input set of these terms is closed".into())
        })?;
    Ok(v1::PowerRequestResponse {
        session_id,
        payment_id,
        scheme: v1::Scheme::SingleFee as i32,
        amount_msat: terms.amount.to_sat() * 1_000,
        quota_mwh: terms.quota.0,
        payout_script: set.seller.terms().payout_script.to_bytes(),
        terms: Some(v1::power_request_response::Terms::SingleFee(
            v1::SingleFeePaymentTerms {
                value_sat: value.to_sat(),
                max_amount_sat: set.seller.terms().max.to_sat(),
                inputs: outpoints_to_proto(&set.seller.inputs()),
                fee_sat: set.fee.map_or(0, |f| f.to_sat()),
            },
        )),
    })
}

/// Check one payment against the set, check it against the chain, and hold it (persisted,
/// replacing the one before) under the outlet's set lock, so that no close of the set comes
/// between the check and the hold (a payment held into a set already closed would be neither
/// sent nor credited); broadcast the set when it is full. The caller credits it.
async fn pay(
    cx: &SellerContext<'_>,
    session_id: &str,
    payment_id: u64,
    psbt: &[u8],
    terms: StoredTerms,
) -> Verdict {
    let (index, value) = terms.single_fee.expect("single-fee terms");
    let closed = || {
        SocketError::InputSetClosed(
            "the input set of these terms is closed; ask for new terms".into(),
        )
    };
    let tx = decode_payment(psbt).map_err(|e| SocketError::Cheat(e.to_string()))?;
    let mut seller = cx
        .shared
        .sets
        .snapshot(&cx.config.id)
        .filter(|s| s.is(session_id, index))
        .ok_or_else(closed)?
        .seller;
    let paid = seller
        .accept(tx.clone())
        .map_err(|e| SocketError::Cheat(e.to_string()))?;
    debug_assert_eq!(paid, value);
    let checked = cx.checked_on_chain(&tx).await?;
    let fee = checked.fee;
    let txid = tx.compute_txid();

    let mut slot = cx.shared.sets.of(&cx.config.id).ok_or_else(closed)?;
    let Some(set) = slot.as_mut().filter(|s| s.is(session_id, index)) else {
        return Err(SocketError::InputSetClosed(
            "the input set closed meanwhile; ask for new terms".into(),
        ));
    };
    // Persist the new latest (one SQLite transaction, within the cable's unconfirmed limit: a
    // held set can be double-spent until it confirms) before it is credited.
    cx.shared
        .persist_within_unconfirmed_limit(session_id, terms.amount, |store| {
            store.hold_single_fee(session_id, payment_id, index, &tx, terms, value, &checked)
        })?;
    set.seller = seller;
    set.fee.get_or_insert(fee);
    if set.seller.is_full() {
        // The set reached its maximum: broadcast it; the next payment starts a new set.
        if let Some(set) = slot.take() {
            cx.shared.settle(set);
        }
    }
    Ok(Credit {
        quota: terms.quota,
        txid: txid.to_string(),
    })
}
