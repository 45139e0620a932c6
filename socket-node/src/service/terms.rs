//! A `PowerRequest`'s terms (paper seed 000 Table I; design.md "Payment schemes"), issued in
//! the outlet's task: the session opened on a first request (or the cable's own unpaid one
//! resumed), a later one checked against its session, and the seller of its scheme asked for
//! the next payment's terms.

use bitcoin::hex::DisplayHex;
use bitcoin::secp256k1::rand;
use proto::v1::{self};
use proto::Scheme;

use crate::error::SocketError;
use crate::outlet::OutletTask;
use crate::seller::{seller_of, Issued};
use crate::shared::Shared;
use crate::store::{CableAuth, PaymentStatus};

pub(super) fn new_session_id() -> String {
    rand::random::<[u8; 16]>().to_lower_hex_string()
}

/// The session in progress on `task`'s outlet if it is `cable`'s and has no payment.
pub(super) fn own_unpaid_session(
    task: &OutletTask,
    shared: &Shared,
    cable: &CableAuth,
) -> Result<Option<String>, SocketError> {
    let Some(session) = task.machine.session().filter(|s| s.payments == 0) else {
        return Ok(None);
    };
    let own = shared
        .store()
        .session_cable(&session.id)
        .map_err(SocketError::internal)?
        .is_some_and(|key| key == cable.key.to_string());
    Ok(own.then(|| session.id.clone()))
}

/// In the outlet's task: open the session on a first request, check a later one belongs to a
/// session of this scheme in progress, and issue the terms of its next payment (terms issued
/// and not paid yet are issued again, not doubled), stored before they leave.
/// Errors: the seller's refusal of the request, `FAILED_PRECONDITION` for a session not in
/// progress here or of another scheme, `INTERNAL` for a store that failed.
pub(super) fn issue_terms(
    task: &mut OutletTask,
    shared: &Shared,
    scheme: Scheme,
    request: &v1::PowerRequestRequest,
    cable: &CableAuth,
) -> Result<Issued, SocketError> {
    let seller = seller_of(scheme);
    // An opening request of the cable whose session is in progress here: the cable does not
    // know that session (the reply that opened it was lost, or the cable could not store it),
    // so it never paid in it. Opened with the offer the cable holds (the same payout script),
    // the request resumes it; else it is ended and a new one opened with the outlet's offer
    // now. With a payment, or another cable's, it stays and the request is refused as before
    // (socket.proto `PowerRequestRequest.session_id`). Only the session's own key (the
    // signature was checked) does this.
    let mut resumed = None;
    if request.session_id.is_empty() {
        if let Some(id) = own_unpaid_session(task, shared, cable)? {
            let payout = shared
                .store()
                .session_payout(&id)
                .map_err(SocketError::internal)?;
            if payout.is_some_and(|p| p.as_bytes() == request.offer_payout_script.as_slice()) {
                tracing::info!(outlet = %request.outlet_id, session = %id, "its cable asks to open it again: resumed");
                resumed = Some(id);
            } else {
                tracing::info!(outlet = %request.outlet_id, session = %id, "its cable opens a new session: the one it lost is ended");
                task.abandon(&id, "its cable opened a new one (it lost this one's reply)");
            }
        }
    }
    let requested = resumed.as_deref().unwrap_or(&request.session_id);
    let (session_id, payout) = if requested.is_empty() {
        if !seller.opens_with_power_request() {
            return Err(SocketError::wrong_state(format!(
                "a {scheme} session opens with OpenChannel"
            )));
        }
        let id = new_session_id();
        let payout = task.open_session(&id, scheme, cable)?.script;
        (id, payout)
    } else {
        let stored = shared
            .store()
            .session_scheme(requested)
            .map_err(SocketError::internal)?;
        if stored != Some(scheme) {
            return Err(SocketError::wrong_state(format!(
                "session {} does not pay with {}",
                requested,
                scheme.name()
            )));
        }
        // A session stored before payout addresses were per session has none: it gets no
        // new terms (PayTransaction would refuse them too), rather than an address another
        // session will be bound to.
        let payout = shared
            .store()
            .session_payout(requested)
            .map_err(SocketError::internal)?
            .ok_or_else(|| {
                SocketError::wrong_state(format!(
                    "session {} has no payout address; start a new session",
                    requested
                ))
            })?;
        (requested.to_owned(), payout)
    };
    let last_payment_id = task
        .machine
        .active_session(&session_id)
        .map_err(SocketError::wrong_state)?
        .last_payment_id;
    let store = shared.store();
    let unpaid = {
        let paid_on_chain = store
            .payment(&session_id, last_payment_id)
            .map_err(SocketError::internal)?
            .is_some_and(|p| p.status != PaymentStatus::Failed);
        let paid_over_ln = store
            .ln_payment_received(&session_id, last_payment_id)
            .map_err(SocketError::internal)?;
        if paid_on_chain || paid_over_ln {
            None
        } else {
            store
                .terms(&session_id, last_payment_id)
                .map_err(SocketError::internal)?
        }
    };
    let (payment_id, terms) = match unpaid {
        Some(terms)
            if last_payment_id > 0 && seller.terms_still_valid(task, &session_id, &terms) =>
        {
            (last_payment_id, terms)
        }
        _ => {
            let terms = seller.new_terms(task, &store, &payout, &session_id, request)?;
            let payment_id = last_payment_id + 1;
            store
                .issue_terms(&session_id, payment_id, terms)
                .map_err(SocketError::internal)?;
            task.machine
                .active_session(&session_id)
                .map_err(SocketError::wrong_state)?
                .last_payment_id = payment_id;
            (payment_id, terms)
        }
    };
    Ok(Issued {
        session_id,
        payment_id,
        payout_script: payout,
        terms,
        set: task.set.clone(),
    })
}
