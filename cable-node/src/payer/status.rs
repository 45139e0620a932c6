//! The cable's reading of the socket's signed statuses (design.md "Trust"): each verified
//! by the key of the accepted offer, kept as proof when it is of this session, checked against
//! the cable's own meter; then acted on (the appliance relay, a lockout, the session's end).

use std::time::{Duration, Instant};

use anyhow::Context;
use proto::identity::session_hash;
use proto::v1::{self, OutletState};

use super::metering::Latest;
use super::session::Session;
use super::{Cable, CableError};
use crate::policy::AcceptedOffer;

impl Cable {
    /// Check a status the socket signed (design.md "Trust"): by the key of the accepted offer,
    /// about this outlet. A report of this session is kept in the store, as proof of what the
    /// socket counted. Returns `None` for a report older than the newest seen (a stream may
    /// deliver an event queued before the snapshot that follows it). Errors:
    /// [`CableError::CableRefusedSocket`] when the status is unsigned or its signature fails: the
    /// cable acts on nothing it cannot prove.
    pub(super) fn check_status(
        &mut self,
        signed: Option<&v1::SignedStatus>,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<Option<v1::StatusReport>, CableError> {
        let signed = signed.ok_or_else(|| {
            CableError::CableRefusedSocket("a status the socket did not sign".into())
        })?;
        let report = proto::identity::verify_status(
            signed,
            &accepted.socket.socket_identity_key,
            &self.config.outlet_id,
        )
        .map_err(|e| CableError::CableRefusedSocket(format!("status: {e}")))?;
        // A QuotaLow may carry the very report of the status before it: equal is not stale.
        if report.sequence < session.last_status_sequence {
            tracing::debug!(sequence = report.sequence, "stale status");
            return Ok(None);
        }
        session.last_status_sequence = report.sequence;
        if !session.id.is_empty() && report.session_hash == session_hash(&session.id) {
            self.store
                .record_status(&session.id, &report, signed)
                .context("storing a signed status")?;
            let cable_mwh = self.meter_now(session);
            session.latest = Some(Latest {
                signed: signed.clone(),
                report: report.clone(),
                cable_mwh,
            });
            if let Some(cable_mwh) = cable_mwh {
                self.check_count(session, &report, cable_mwh, accepted)?;
            }
        }
        Ok(Some(report))
    }

    /// React to a status: close the appliance relay once Paid, stop on Lockout, and decide
    /// whether the session is over.
    pub(super) fn on_status(
        &mut self,
        status: &v1::GetStatusResponse,
        accepted: &AcceptedOffer,
        session: &mut Session,
        plugged_at: Instant,
        idle: Duration,
    ) -> Result<Option<String>, CableError> {
        let Some(report) = self.check_status(status.signed.as_ref(), accepted, session)? else {
            return Ok(None);
        };
        // Mains reaches the cable while the socket's relay is closed (the simulator's meter
        // counts only then; real hardware simply measures).
        self.hw.set_mains(status.relay_closed);
        let state = OutletState::try_from(report.state).unwrap_or(OutletState::Unspecified);
        let ours = !session.id.is_empty() && report.session_hash == session_hash(&session.id);
        tracing::debug!(
            state = state.as_str_name(),
            ours,
            power_mw = status.power_mw,
            left_mwh = report.quota_remaining_mwh,
            "status"
        );
        if ours {
            session.energy_used_mwh = report.energy_used_mwh;
            session.seen_in_status = true;
        }
        match state {
            OutletState::Paid if !self.hw.relay.is_closed() => {
                self.hw.relay.close().map_err(anyhow::Error::from)?;
                let elapsed = plugged_at.elapsed();
                session.plug_in_to_paid.get_or_insert(elapsed);
                tracing::info!(
                    after_ms = elapsed.as_millis() as u64,
                    "appliance relay closed"
                );
            }
            OutletState::Lockout => {
                self.hw.relay.open().map_err(anyhow::Error::from)?;
                return Err(CableError::SocketRefusedCable(format!(
                    "locked out: {}",
                    status.reason
                )));
            }
            OutletState::Standby if session.seen_in_status && report.session_hash.is_empty() => {
                return Ok(Some("the socket ended the session".into()));
            }
            // Resumed after the cable stopped, and the outlet has no session: the socket ended
            // it meanwhile (a session in progress shows in every status of its outlet).
            OutletState::Standby if session.resumed && report.session_hash.is_empty() => {
                return Ok(Some(
                    "the socket ended the session while the cable was away".into(),
                ));
            }
            _ => {}
        }
        if status.power_mw > 0 {
            session.drew_power = true;
            session.idle_since = None;
        } else if session.drew_power || self.hw.relay.is_closed() {
            // Idle after drawing power: done. Idle from the start, once paid: nothing to power.
            let since = *session.idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= idle {
                return Ok(Some(
                    if session.drew_power {
                        "appliance done"
                    } else {
                        "appliance idle"
                    }
                    .into(),
                ));
            }
        }
        // Spent: nothing left, no more may be paid, and the socket has credited every quota
        // paid (a status sent while the last payment was on its way shows 0 left before the
        // credit; ending then would give up a quota paid for).
        let quotas_paid = session.paid.to_sat() / accepted.quota_amount.to_sat().max(1);
        if state == OutletState::Paid
            && report.quota_remaining_mwh == 0
            && report.payments >= quotas_paid
            && !self
                .config
                .policy
                .allows(session.paid, accepted.quota_amount)
        {
            return Ok(Some("session budget spent".into()));
        }
        Ok(None)
    }
}
