//! Seller side of the `lightning` scheme (design.md; BOLT 11 via ldk-node): per quota a BOLT11
//! invoice of exactly price × quota msat; the quota is credited when ldk-node reports the
//! payment received, after the payment is recorded ([`crate::store::Store::receive_ln_payment`]).

use ln::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use proto::units::{EnergyMwh, PriceMsatPerWh};
use proto::v1;
use tonic::Status;

use super::internal;
use crate::config::SchemeName;
use crate::node::SocketNode;
use crate::store::StoredTerms;

/// The terms of one quota (the invoice is made in [`reply`]).
pub(crate) fn new_terms(node: &SocketNode) -> StoredTerms {
    StoredTerms {
        amount: node.quota_amount(),
        quota: EnergyMwh(node.config.outlet.quota_mwh),
        single_fee: None,
    }
}

/// The `PowerRequest` reply: the invoice of this payment, made and stored on first ask.
pub(crate) fn reply(
    node: &SocketNode,
    session_id: String,
    payment_id: u64,
    terms: StoredTerms,
) -> Result<v1::PowerRequestResponse, Status> {
    let ln = node
        .ln
        .as_ref()
        .ok_or_else(|| Status::failed_precondition("this socket has no Lightning node"))?;
    let amount_msat = PriceMsatPerWh(node.config.outlet.price_msat_per_wh)
        .cost_of(terms.quota)
        .map_err(internal)?
        .0;
    // Bound first: a store guard in the match scrutinee would live through the arms.
    let issued = node
        .store()
        .invoice_of(&session_id, payment_id)
        .map_err(internal)?;
    let bolt11 = match issued {
        Some(bolt11) => bolt11,
        None => {
            let text = format!(
                "t2t {} session {session_id} payment {payment_id}",
                node.config.outlet.id
            );
            let description =
                Bolt11InvoiceDescription::Direct(Description::new(text).map_err(internal)?);
            let expiry = node
                .config
                .lightning
                .as_ref()
                .map_or(600, |l| l.invoice_expiry_secs);
            let invoice = ln
                .bolt11_payment()
                .receive(amount_msat, &description, expiry)
                .map_err(internal)?;
            let bolt11 = invoice.to_string();
            node.store()
                .issue_invoice(
                    &session_id,
                    payment_id,
                    &ln::payment_hash_hex(&invoice),
                    &bolt11,
                    amount_msat,
                    terms.quota,
                )
                .map_err(internal)?;
            bolt11
        }
    };
    Ok(v1::PowerRequestResponse {
        session_id,
        payment_id,
        scheme: v1::Scheme::Lightning as i32,
        amount_msat,
        quota_mwh: terms.quota.0,
        payout_script: Vec::new(),
        bolt11_invoice: bolt11,
        ..Default::default()
    })
}

/// Why a keysend was not credited.
pub(crate) enum KeysendRefusal {
    /// It names no session in progress here, or keysend is off: kept, audited, nothing else.
    Stray(String),
    /// It names the session in progress but breaks a rule: the cable cheats, lock out.
    Cheat { session_id: String, reason: String },
}

/// A keysend received (design.md `lightning`, the fast path): credit one quota when its
/// session record names the `lightning` session in progress, its payment id is the next one
/// (or the last one issued and still unpaid), and it pays exactly price × quota msat. The
/// payment is recorded (with its terms) before the quota is credited; a payment hash recorded
/// before (an event delivered again after a restart) credits nothing; a second payment for a
/// payment id paid before credits nothing and locks out.
///
/// ldk-node claims a keysend before the socket sees it, so a refused one stays with the socket.
pub(crate) fn receive_keysend(
    node: &SocketNode,
    payment_hash: &str,
    amount_msat: u64,
    records: &[ln::ldk_node::CustomTlvRecord],
) -> Result<(), KeysendRefusal> {
    let stray = |reason: String| KeysendRefusal::Stray(reason);
    if !node.config.lightning.as_ref().is_some_and(|l| l.keysend) {
        return Err(stray("this socket does not take keysends".into()));
    }
    let record = ln::SessionRecord::from_tlvs(records).map_err(|e| stray(e.to_string()))?;
    // ldk-node delivers an event again when the socket stopped before handling it: a keysend
    // recorded before was credited then.
    let known = node.store().ln_hash_received(payment_hash);
    if known.map_err(|e| stray(e.to_string()))? {
        tracing::debug!(%payment_hash, "keysend recorded before");
        return Ok(());
    }
    let cheat = |reason: String| KeysendRefusal::Cheat {
        session_id: record.session_id.clone(),
        reason,
    };
    let mut inner = node.inner();
    let last = match inner.outlet.active_session(&record.session_id) {
        Ok(session) => session.last_payment_id,
        Err(e) => return Err(stray(format!("session {}: {e}", record.session_id))),
    };
    let scheme = node
        .store()
        .session_scheme(&record.session_id)
        .map_err(|e| stray(e.to_string()))?;
    if scheme.as_deref() != Some(SchemeName::Lightning.name()) {
        return Err(cheat(format!(
            "a keysend for session {}, which pays with {scheme:?}",
            record.session_id
        )));
    }
    let terms = new_terms(node);
    let expected_msat = PriceMsatPerWh(node.config.outlet.price_msat_per_wh)
        .cost_of(terms.quota)
        .map_err(|e| stray(e.to_string()))?
        .0;
    if amount_msat != expected_msat {
        return Err(cheat(format!(
            "a keysend of {amount_msat} msat is not price x quota = {expected_msat} msat"
        )));
    }
    let new_terms = if record.payment_id == last + 1 {
        Some(terms)
    } else if record.payment_id == last && last > 0 {
        None
    } else {
        return Err(cheat(format!(
            "keysend payment id {} is not the next one (last issued {last})",
            record.payment_id
        )));
    };
    let recorded = node.store().receive_keysend(
        payment_hash,
        &record.session_id,
        record.payment_id,
        amount_msat,
        new_terms,
        terms.quota,
    );
    match recorded {
        Ok(true) => {}
        Ok(false) => {
            return Err(cheat(format!(
                "payment {} was paid before",
                record.payment_id
            )))
        }
        Err(e) => return Err(stray(format!("recording the keysend: {e}"))),
    }
    if let Ok(session) = inner.outlet.active_session(&record.session_id) {
        session.last_payment_id = session.last_payment_id.max(record.payment_id);
    }
    node.credit_locked(&mut inner, &record.session_id, terms.quota, payment_hash)
        .map_err(|e| stray(e.message().to_owned()))
}
