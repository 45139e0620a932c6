//! What the service checks before a request reaches its outlet's seller (design.md "Trust"):
//! who signed it and with what sequence, whether its outlet takes openings and offers its
//! scheme, the receipt it carries, and one payment of a session checked at a time.

use bitcoin::hex::DisplayHex;
use proto::receipt::MeterCheck;
use proto::request_auth::SessionRequest;
use proto::v1::{self};
use proto::Scheme;

use super::SocketService;
use crate::error::SocketError;
use crate::outlet::OutletHandle;
use crate::seller::SellerContext;
use crate::shared::Shared;
use crate::store::{Admitted, Authorized, CableAuth, ReceiptTaken};

impl SocketService {
    /// Check that `request` is signed by its session's cable with a new sequence (design.md
    /// "Trust"), before it may change anything; for a request that opens a session, that its
    /// cable is not banned and its sequence is above the cable's last opening request's.
    /// Returns who signed. Errors: `UNAUTHENTICATED` (no lockout), `NOT_FOUND` for an unknown
    /// session, `PERMISSION_DENIED` (`CABLE_BANNED`) for a banned cable.
    pub(super) fn authenticate<R: SessionRequest>(
        &self,
        request: &R,
    ) -> Result<CableAuth, SocketError> {
        crate::outlet::check_id_len("session id", request.session_id())?;
        let (key, sequence) =
            proto::request_auth::verify_request(request, &self.0.shared.recipient())
                .map_err(|e| SocketError::Unauthenticated(e.to_string()))?;
        self.0.shared.limits.check_identity(&key)?;
        let cable = CableAuth { key, sequence };
        let session_id = request.session_id();
        if session_id.is_empty() {
            let admitted = self
                .0
                .shared
                .store()
                .admit_cable(&cable)
                .map_err(SocketError::internal)?;
            return match admitted {
                Admitted::Yes => Ok(cable),
                Admitted::Replay { last_sequence } => Err(SocketError::Unauthenticated(format!(
                    "replayed opening request: sequence {sequence} is not above {last_sequence}"
                ))),
                Admitted::Banned {
                    reason,
                    until_unix_ms,
                } => Err(SocketError::Banned(match until_unix_ms {
                    Some(until) => format!("{reason} (until Unix ms {until})"),
                    None => format!("{reason} (for good)"),
                })),
            };
        }
        let authorized = self
            .0
            .shared
            .store()
            .authorize(session_id, &cable)
            .map_err(SocketError::internal)?;
        match authorized {
            Authorized::Yes => Ok(cable),
            Authorized::NoSession => Err(SocketError::not_found(format!(
                "no session {session_id:?} here"
            ))),
            Authorized::OtherCable => Err(SocketError::Unauthenticated(format!(
                "session {session_id} belongs to another cable"
            ))),
            Authorized::Replay { last_sequence } => Err(SocketError::Unauthenticated(format!(
                "replayed request: sequence {sequence} is not above {last_sequence}"
            ))),
        }
    }

    /// Check and keep the cable's metering receipt of `session_id` (socket.proto
    /// `MeteringReceipt`) before the request it came with acts. A receipt whose cable meter
    /// falls behind the socket's count beyond the tolerance is the anomaly
    /// `meter-disagreement` (once per session): stored with its evidence, the cable flagged; the session goes on
    /// (the cable decides whether to pay on). Errors: `INVALID_ARGUMENT` for a receipt that
    /// does not check or is older than the last one (nothing kept).
    pub(super) fn take_receipt(
        &self,
        outlet: &OutletHandle,
        session_id: &str,
        cable: &CableAuth,
        receipt: Option<&v1::MeteringReceipt>,
    ) -> Result<(), SocketError> {
        let Some(receipt) = receipt else {
            return Ok(());
        };
        if session_id.is_empty() {
            return Err(SocketError::invalid(
                "a receipt comes with a request of its session, not one that opens it",
            ));
        }
        let shared = &self.0.shared;
        let checked = proto::receipt::verify_receipt(
            receipt,
            &cable.key,
            &shared.identity.public_key(),
            outlet.id(),
            session_id,
        )
        .map_err(|e| SocketError::invalid(format!("receipt: {e}")))?;
        let store = shared.store();
        match store
            .record_receipt(session_id, &checked, receipt)
            .map_err(SocketError::internal)?
        {
            ReceiptTaken::Kept => {}
            ReceiptTaken::Again => return Ok(()),
            ReceiptTaken::Stale { last_sequence } => {
                return Err(SocketError::invalid(format!(
                    "receipt: its status {} is older than the last receipt's {last_sequence}",
                    checked.report.sequence
                )))
            }
        }
        if !checked.body.cable_metered {
            return Ok(());
        }
        let mut check = MeterCheck::new(shared.config.meter_tolerance());
        let pairs = store
            .metered_pairs(session_id)
            .map_err(SocketError::internal)?;
        let newest = pairs
            .iter()
            .map(|&(socket, cable)| check.observe(socket, cable))
            .last();
        let Some(Err(disagreement)) = newest else {
            return Ok(());
        };
        let first = !store
            .has_anomaly(session_id, "meter-disagreement")
            .map_err(SocketError::internal)?;
        if first {
            let reason = format!("anomaly: the cable's meter disagrees: {disagreement}");
            let evidence = serde_json::json!({
                "socket_energy_mwh": checked.report.energy_used_mwh,
                "cable_energy_mwh": checked.body.cable_energy_mwh,
                "since_baseline": disagreement,
                "status_sequence": checked.report.sequence,
                "receipt_body_hex": receipt.body.to_lower_hex_string(),
            });
            store
                .record_anomaly(
                    outlet.id(),
                    Some(session_id),
                    "meter-disagreement",
                    "flag",
                    &evidence,
                    &reason,
                )
                .map_err(SocketError::internal)?;
            tracing::warn!(outlet = outlet.id(), session = session_id, %reason, "cable flagged");
        }
        Ok(())
    }

    pub(super) fn context<'a>(&'a self, outlet: &'a OutletHandle) -> SellerContext<'a> {
        SellerContext {
            shared: &self.0.shared,
            config: &outlet.config,
        }
    }
}

/// The scheme of a request, if `outlet` offers it.
pub(super) fn offered_scheme(outlet: &OutletHandle, scheme: i32) -> Result<Scheme, SocketError> {
    outlet
        .config
        .schemes
        .iter()
        .copied()
        .find(|s| s.to_proto() as i32 == scheme)
        .ok_or_else(|| {
            SocketError::invalid(format!(
                "scheme {scheme} is not offered on outlet {}; see GetOffer",
                outlet.id()
            ))
        })
}

/// Marks a payment of the outlet's session as being checked, and clears the mark when ended
/// ([`PaymentInFlight::end`]) or dropped (a call cancelled).
pub(super) struct PaymentInFlight<'a> {
    outlet: &'a OutletHandle,
    session_id: String,
    ended: bool,
}

impl<'a> PaymentInFlight<'a> {
    /// Refused with `FAILED_PRECONDITION` when `session_id` is not in progress on the outlet,
    /// and `UNAVAILABLE` (retry) while another payment of it is being checked. The session
    /// counts as offered a payment from now on (no lockout for want of one while the socket
    /// checks it, or cannot: design.md "Trust").
    pub(super) async fn begin(
        outlet: &'a OutletHandle,
        session_id: &str,
    ) -> Result<Self, SocketError> {
        outlet.begin_payment(session_id.to_owned()).await?;
        Ok(PaymentInFlight {
            outlet,
            session_id: session_id.to_owned(),
            ended: false,
        })
    }

    /// The payment is done with; `judged`: refused for good, so no longer a payment waiting on
    /// the socket.
    pub(super) fn end(mut self, judged: bool) {
        self.ended = true;
        self.outlet
            .end_payment(std::mem::take(&mut self.session_id), judged);
    }
}

impl Drop for PaymentInFlight<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.outlet
                .end_payment(std::mem::take(&mut self.session_id), false);
        }
    }
}

/// Whether `outlet` could open a session for the cable that signed `request` now: the cable
/// not banned, the outlet not locked out, plugged in, and no other cable's session in progress
/// (its own may be resumed). Checked
/// before the opening request is admitted, so that a request for an outlet that cannot take it
/// writes nothing to the store (no `cables` row, no opening sequence). The signature is checked
/// here too (statelessly); [`SocketService::authenticate`] checks it again with the store.
/// Errors: `UNAUTHENTICATED` for a bad signature, `PERMISSION_DENIED` (`CABLE_BANNED`) for a
/// banned cable, `FAILED_PRECONDITION` with the reason.
pub(super) async fn takes_openings<R: SessionRequest>(
    shared: &Shared,
    outlet: &OutletHandle,
    request: &R,
) -> Result<(), SocketError> {
    let (key, _) = proto::request_auth::verify_request(request, &shared.recipient())
        .map_err(|e| SocketError::Unauthenticated(e.to_string()))?;
    let key = key.to_string();
    // A banned cable hears that first, whatever the outlet's state.
    let ban = shared.store().ban_of(&key).map_err(SocketError::internal)?;
    if let Some((reason, until)) = ban {
        return Err(SocketError::Banned(match until {
            Some(until) => format!("{reason} (until Unix ms {until})"),
            None => format!("{reason} (for good)"),
        }));
    }
    let refusal = outlet.opening_refusal(key).await?;
    match refusal {
        Some(reason) => Err(SocketError::wrong_state(reason)),
        None => Ok(()),
    }
}
