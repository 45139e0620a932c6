//! A `PowerRequest`'s terms (paper seed 000 Table I; design.md "Payment schemes") and an
//! `OpenChannel`'s session, decided in the outlet's task: the session opened on a first
//! request (or the cable's own unpaid one resumed), a later one checked against its session,
//! and the seller of its scheme asked for the next payment's terms, stored before they leave.

use bitcoin::hex::DisplayHex;
use bitcoin::secp256k1::rand;
use proto::v1;
use proto::Scheme;

use super::OutletTask;
use crate::error::SocketError;
use crate::seller::{seller_of, Issued};
use crate::store::{CableAuth, PaymentStatus, Payout};

/// A new random session id: 16 bytes, lower-case hex.
pub(crate) fn new_session_id() -> String {
    rand::random::<[u8; 16]>().to_lower_hex_string()
}

/// What an `OpenChannel` opened ([`OutletTask::open_for_channel`]).
pub(crate) enum Opened {
    /// The cable's own unpaid session for this very deposit (the reply that opened it was
    /// lost): its refund is signed again.
    Again(String),
    /// A new session, bound to this payout address.
    New(Payout),
}

impl OutletTask {
    /// The session in progress if it is `cable`'s and has no payment.
    fn own_unpaid_session(&self, cable: &CableAuth) -> Result<Option<String>, SocketError> {
        let Some(session) = self.machine.session().filter(|s| s.payments == 0) else {
            return Ok(None);
        };
        let own = self
            .shared
            .store()
            .session_cable(&session.id)
            .map_err(SocketError::internal)?
            .is_some_and(|key| key == cable.key.to_string());
        Ok(own.then(|| session.id.clone()))
    }

    /// Open session `session_id` of `scheme` for `cable`'s `OpenChannel` with the deposit
    /// `deposit_txid`. The cable's own unpaid session in progress means the reply that opened
    /// it was lost: for this very deposit it is opened again; for another, the cable lost it,
    /// and it is ended before the new one opens (socket.proto `OpenChannel`).
    pub(super) fn open_for_channel(
        &mut self,
        session_id: &str,
        scheme: Scheme,
        cable: &CableAuth,
        deposit_txid: &str,
    ) -> Result<Opened, SocketError> {
        if let Some(own) = self.own_unpaid_session(cable)? {
            let same_deposit = self
                .shared
                .store()
                .channel_of(&own)
                .map_err(SocketError::internal)?
                .is_some_and(|c| c.channel.deposit.txid.to_string() == deposit_txid);
            if same_deposit {
                return Ok(Opened::Again(own));
            }
            self.abandon(
                &own,
                "its cable opened a new one (it lost this one's reply)",
            );
        }
        Ok(Opened::New(self.open_session(session_id, scheme, cable)?))
    }

    /// Open the session on a first request, check a later one belongs to a session of this
    /// scheme in progress, and issue the terms of its next payment (terms issued and not paid
    /// yet are issued again, not doubled), stored before they leave.
    /// Errors: the seller's refusal of the request, `FAILED_PRECONDITION` for a session not in
    /// progress here or of another scheme, `INTERNAL` for a store that failed.
    pub(super) fn issue_terms(
        &mut self,
        scheme: Scheme,
        request: &v1::PowerRequestRequest,
        cable: &CableAuth,
    ) -> Result<Issued, SocketError> {
        let seller = seller_of(scheme);
        let shared = std::sync::Arc::clone(&self.shared);
        // An opening request of the cable whose session is in progress here: the cable does
        // not know that session (the reply that opened it was lost, or the cable could not
        // store it), so it never paid in it. Opened with the offer the cable holds (the same
        // payout script), the request resumes it; else it is ended and a new one opened with
        // the outlet's offer now. With a payment, or another cable's, it stays and the request
        // is refused as before (socket.proto `PowerRequestRequest.session_id`). Only the
        // session's own key (the signature was checked) does this.
        let mut resumed = None;
        if request.session_id.is_empty() {
            if let Some(id) = self.own_unpaid_session(cable)? {
                let payout = shared
                    .store()
                    .session_payout(&id)
                    .map_err(SocketError::internal)?;
                if payout.is_some_and(|p| p.as_bytes() == request.offer_payout_script.as_slice()) {
                    tracing::info!(outlet = %request.outlet_id, session = %id, "its cable asks to open it again: resumed");
                    resumed = Some(id);
                } else {
                    tracing::info!(outlet = %request.outlet_id, session = %id, "its cable opens a new session: the one it lost is ended");
                    self.abandon(&id, "its cable opened a new one (it lost this one's reply)");
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
            let payout = self.open_session(&id, scheme, cable)?.script;
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
            // A session stored before payout addresses were per session has none: it gets
            // no new terms (PayTransaction would refuse them too), rather than an address
            // another session will be bound to.
            let payout = shared
                .store()
                .session_payout(requested)
                .map_err(SocketError::internal)?
                .ok_or_else(|| {
                    SocketError::wrong_state(format!(
                        "session {requested} has no payout address; start a new session"
                    ))
                })?;
            (requested.to_owned(), payout)
        };
        self.machine
            .active_session(&session_id)
            .map_err(SocketError::wrong_state)?;
        // The store is the one owner of which payment ids were issued.
        let unpaid = {
            let store = shared.store();
            let last_payment_id = store
                .last_payment_id(&session_id)
                .map_err(SocketError::internal)?;
            let paid_on_chain = store
                .payment(&session_id, last_payment_id)
                .map_err(SocketError::internal)?
                .is_some_and(|p| p.status != PaymentStatus::Failed);
            let paid_over_ln = store
                .ln_payment_received(&session_id, last_payment_id)
                .map_err(SocketError::internal)?;
            let unpaid = if paid_on_chain || paid_over_ln || last_payment_id == 0 {
                None
            } else {
                store
                    .terms(&session_id, last_payment_id)
                    .map_err(SocketError::internal)?
            };
            (last_payment_id, unpaid)
        };
        let (payment_id, terms) = match unpaid {
            (last, Some(terms))
                if seller.terms_still_valid(&shared, &self.config, &session_id, &terms) =>
            {
                (last, terms)
            }
            _ => {
                // The seller takes a set's lock before the store's: no store guard held here.
                // The id is decided where it is written: a keysend may have taken the next one
                // meanwhile (the Lightning event thread records keysends with their terms).
                let terms =
                    seller.new_terms(&shared, &self.config, &payout, &session_id, request)?;
                let payment_id = shared
                    .store()
                    .issue_next_terms(&session_id, terms)
                    .map_err(SocketError::internal)?;
                (payment_id, terms)
            }
        };
        Ok(Issued {
            session_id,
            payment_id,
            payout_script: payout,
            terms,
            set: shared.sets.snapshot(&self.config.id),
        })
    }
}
