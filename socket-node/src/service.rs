//! The gRPC service `t2t.v1.Socket` (paper seed 000 Table I; design.md "Payment schemes"):
//! offers, status, the plug-in link, and requests and payments routed to their outlet and
//! dispatched to the seller side of their scheme ([`crate::seller`]).

use std::sync::Arc;

use bitcoin::hex::DisplayHex;
use bitcoin::secp256k1::rand;
use proto::v1::socket_server::Socket;
use proto::v1::{self};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::SocketError;
use crate::outlet::{OutletHandle, OutletTask};
use crate::seller::{seller_of, spillman, Issued, Refusal, SellerContext};
use crate::shared::Shared;
use crate::station::Station;
use crate::store::{Admitted, Authorized, CableAuth, PaymentStatus, ReceiptTaken};
use proto::receipt::MeterCheck;
use proto::request_auth::SessionRequest;
use proto::Scheme;

/// The tonic service over a running [`Station`].
pub struct SocketService(pub Arc<Station>);

impl SocketService {
    /// Check that `request` is signed by its session's cable with a new sequence (design.md
    /// "Trust"), before it may change anything; for a request that opens a session, that its
    /// cable is not banned and its sequence is above the cable's last opening request's.
    /// Returns who signed. Errors: `UNAUTHENTICATED` (no lockout), `NOT_FOUND` for an unknown
    /// session, `PERMISSION_DENIED` (`CABLE_BANNED`) for a banned cable.
    fn authenticate<R: SessionRequest>(&self, request: &R) -> Result<CableAuth, SocketError> {
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
    fn take_receipt(
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

    fn context<'a>(&'a self, outlet: &'a OutletHandle) -> SellerContext<'a> {
        SellerContext {
            shared: &self.0.shared,
            outlet,
        }
    }
}

/// The scheme of a request, if `outlet` offers it.
fn offered_scheme(outlet: &OutletHandle, scheme: i32) -> Result<Scheme, SocketError> {
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

#[tonic::async_trait]
impl Socket for SocketService {
    async fn get_offer(
        &self,
        request: Request<v1::GetOfferRequest>,
    ) -> Result<Response<v1::GetOfferResponse>, Status> {
        let request = request.into_inner();
        if request.cable_nonce.len() != 32 {
            return Err(SocketError::invalid("cable_nonce must be 32 random bytes").into());
        }
        let outlet = self.0.outlet(&request.outlet_id)?;
        let offer = outlet.offer(request.cable_nonce).await?;
        let shared = &self.0.shared;
        Ok(Response::new(proto::identity::sign_offer(
            &offer,
            &shared.identity,
            shared.certificates.clone(),
        )))
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        let outlet = self.0.outlet(&request.get_ref().outlet_id)?;
        Ok(Response::new(outlet.snapshot().await?.0))
    }

    type WatchStatusStream = ReceiverStream<Result<v1::WatchStatusResponse, Status>>;

    async fn watch_status(
        &self,
        request: Request<v1::WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let station = Arc::clone(&self.0);
        let host_slot = station.shared.limits.watch_stream(request.remote_addr())?;
        let request = request.into_inner();
        // Signed: this stream is the cable's presence (socket.proto WatchStatusRequest.auth);
        // unsigned: it only watches.
        let cable = match &request.auth {
            None => None,
            Some(_) => {
                let (key, sequence) =
                    proto::request_auth::verify_request(&request, &station.shared.recipient())
                        .map_err(|e| SocketError::Unauthenticated(e.to_string()))?;
                Some((key, sequence))
            }
        };
        let outlet_id = request.outlet_id;
        let outlet = station.outlet(&outlet_id)?;
        // The stream of the cable whose session is in progress: its sequence is checked and
        // kept with the session's (persisted), like any request of the session, so that a
        // captured one played back, even after a restart, keeps nothing alive.
        if let Some((key, sequence)) = cable {
            let key_hex = key.to_string();
            let session = outlet
                .read(move |task| task.session_of_cable(&key_hex))
                .await?;
            if let Some(session_id) = session {
                let authorized = station
                    .shared
                    .store()
                    .authorize(&session_id, &CableAuth { key, sequence })
                    .map_err(SocketError::internal)?;
                if let Authorized::Replay { last_sequence } = authorized {
                    return Err(SocketError::Unauthenticated(format!(
                        "replayed WatchStatus: sequence {sequence} is not above {last_sequence}"
                    ))
                    .into());
                }
            }
        }
        let cable = cable.map(|(key, sequence)| (key.to_string(), sequence));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // Counted from now on, before the reply, so a PowerRequest that follows finds the
        // cable plugged in.
        let (mut events, plugged) = outlet.watch(cable)?;
        tokio::spawn(async move {
            let (_plugged, _host_slot) = (plugged, host_slot);
            let Ok(outlet) = station.outlet(&outlet_id) else {
                return;
            };
            let Ok((status, low)) = outlet.snapshot().await else {
                return;
            };
            let mut first = vec![v1::watch_status_response::Event::Status(status)];
            first.extend(low.map(v1::watch_status_response::Event::QuotaLow));
            for event in first {
                if tx
                    .send(Ok(v1::WatchStatusResponse { event: Some(event) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    event = events.recv() => match event {
                        Ok(event) => if tx.send(Ok(event)).await.is_err() { return },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn power_request(
        &self,
        request: Request<v1::PowerRequestRequest>,
    ) -> Result<Response<v1::PowerRequestResponse>, Status> {
        let request = request.into_inner();
        let outlet = self.0.outlet(&request.outlet_id)?;
        let scheme = offered_scheme(outlet, request.scheme)?;
        if request.session_id.is_empty() {
            takes_openings(&self.0.shared, outlet, &request).await?;
        }
        let cable = self.authenticate(&request)?;
        self.take_receipt(
            outlet,
            &request.session_id,
            &cable,
            request.receipt.as_ref(),
        )?;
        let shared = Arc::clone(&self.0.shared);
        let issued = outlet
            .call(move |task| issue_terms(task, &shared, scheme, &request, &cable))
            .await??;
        let reply = seller_of(scheme)
            .reply(&self.context(outlet), issued)
            .await?;
        Ok(Response::new(reply))
    }

    async fn pay_transaction(
        &self,
        request: Request<v1::PayTransactionRequest>,
    ) -> Result<Response<v1::PayTransactionResponse>, Status> {
        let arrived = std::time::Instant::now();
        let request = request.into_inner();
        self.authenticate(&request)?;
        let (session_id, payment_id) = (request.session_id.as_str(), request.payment_id);
        let outlet = self.0.outlet_of_session(session_id)?;
        let shared = &self.0.shared;

        // A payment already recorded is answered again, never credited again.
        let recorded = shared
            .store()
            .payment(session_id, payment_id)
            .map_err(SocketError::internal)?;
        if let Some(payment) = recorded.filter(|p| p.status != PaymentStatus::Failed) {
            let state = outlet.snapshot().await?.0.state;
            return Ok(Response::new(v1::PayTransactionResponse {
                txid: payment.tx.compute_txid().to_string(),
                quota_credited_mwh: payment.quota.0,
                state,
            }));
        }
        let terms = shared
            .store()
            .terms(session_id, payment_id)
            .map_err(SocketError::internal)?
            .ok_or_else(|| {
                SocketError::wrong_state(format!(
                    "no terms were issued for payment {payment_id} of session {session_id}"
                ))
            })?;
        // The Lightning seller refuses PayTransaction.
        let scheme = shared
            .store()
            .session_scheme(session_id)
            .map_err(SocketError::internal)?
            .ok_or_else(|| SocketError::internal(format!("session {session_id} has no scheme")))?;
        // One payment of a session at a time: each builds on the one before. No lock is held
        // while it is checked: the outlet only marks it in flight.
        let _in_flight = PaymentInFlight::begin(outlet, session_id).await?;
        let reply = seller_of(scheme)
            .pay(
                &self.context(outlet),
                session_id,
                payment_id,
                &request.psbt,
                terms,
            )
            .await;
        if let Err(e) = &reply {
            if !matches!(e, SocketError::Unavailable(_)) {
                // Judged, and not credited: no longer a payment waiting on the socket.
                let session = session_id.to_owned();
                outlet.post(move |task| task.machine.payment_not_credited(&session));
            }
        } else {
            crate::metrics::METRICS.payment_credited(scheme, arrived.elapsed());
        }
        Ok(Response::new(reply?))
    }

    async fn open_channel(
        &self,
        request: Request<v1::OpenChannelRequest>,
    ) -> Result<Response<v1::OpenChannelResponse>, Status> {
        let request = request.into_inner();
        let outlet = self.0.outlet(&request.outlet_id)?;
        let scheme = offered_scheme(outlet, v1::Scheme::Spillman as i32)?;
        takes_openings(&self.0.shared, outlet, &request).await?;
        let cable = self.authenticate(&request)?;
        // The cable's own unpaid session in progress: the reply that opened it was lost. For
        // this very deposit its refund is signed again; for another the cable lost it, and it
        // is ended before the new one opens (socket.proto `OpenChannel`). One outlet call.
        enum Opened {
            Again(String),
            New(crate::store::Payout),
        }
        let session_id = new_session_id();
        let opened = {
            let (id, shared) = (session_id.clone(), Arc::clone(&self.0.shared));
            let deposit_txid = request.deposit_txid.clone();
            outlet
                .call(move |task| -> Result<Opened, SocketError> {
                    if let Some(own) = own_unpaid_session(task, &shared, &cable)? {
                        let same_deposit = shared
                            .store()
                            .channel_of(&own)
                            .map_err(SocketError::internal)?
                            .is_some_and(|c| c.channel.deposit.txid.to_string() == deposit_txid);
                        if same_deposit {
                            return Ok(Opened::Again(own));
                        }
                        task.abandon(
                            &own,
                            "its cable opened a new one (it lost this one's reply)",
                        );
                    }
                    Ok(Opened::New(task.open_session(&id, scheme, &cable)?))
                })
                .await??
        };
        let payout = match opened {
            Opened::Again(id) => {
                let reply = spillman::reopen(&self.context(outlet), &id, &request)?;
                return Ok(Response::new(reply));
            }
            Opened::New(payout) => payout,
        };
        let cx = self.context(outlet);
        match spillman::open(&cx, &session_id, payout, &request).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(error) => {
                // Nothing was signed: end the session it opened, without blame. A channel
                // refused for its terms cost the socket chain calls, so it counts against the
                // cable's identity (its request rate, and its record); our own trouble does not.
                if let SocketError::ChannelRefused(_) = &error {
                    self.0.shared.limits.penalize(&cable.key);
                    if let Err(e) = self.0.shared.store().count_refusal(&cable.key) {
                        tracing::error!("counting a refusal: {e}");
                    }
                }
                let why = error.to_string();
                let _ = outlet
                    .call(move |task| task.abandon(&session_id, &why))
                    .await;
                Err(error.into())
            }
        }
    }

    async fn fund_channel(
        &self,
        request: Request<v1::FundChannelRequest>,
    ) -> Result<Response<v1::FundChannelResponse>, Status> {
        let request = request.into_inner();
        self.authenticate(&request)?;
        let outlet = self.0.outlet_of_session(&request.session_id)?;
        let cx = self.context(outlet);
        let funded = spillman::fund(&cx, &request).await;
        let session = request.session_id.clone();
        let in_progress = outlet
            .call(move |task| task.machine.active_session(&session).is_ok())
            .await?;
        match funded {
            Ok(deposit_txid) => Ok(Response::new(v1::FundChannelResponse { deposit_txid })),
            // Not checked (bitcoind, the store): no blame, the cable hands it over again.
            Err(Refusal::Unavailable(reason)) => Err(SocketError::unavailable(reason).into()),
            // Mempool policy, an input not found: refused, nobody blamed.
            Err(Refusal::Policy(reason)) => Err(SocketError::invalid(reason).into()),
            // A bad deposit for the session in progress locks out; one naming another session
            // is only refused (it must not lock out someone else's session).
            Err(Refusal::Cheat(reason)) if in_progress => {
                Err(cx.lock_out(&request.session_id, &reason).await.into())
            }
            Err(Refusal::Cheat(reason)) => Err(SocketError::wrong_state(reason).into()),
        }
    }

    async fn end_session(
        &self,
        request: Request<v1::EndSessionRequest>,
    ) -> Result<Response<v1::EndSessionResponse>, Status> {
        let request = request.into_inner();
        let cable = self.authenticate(&request)?;
        let outlet = self.0.outlet_of_session(&request.session_id)?;
        self.take_receipt(
            outlet,
            &request.session_id,
            &cable,
            request.receipt.as_ref(),
        )?;
        let session = request.session_id;
        let used = outlet
            .call(move |task| task.end_session(&session))
            .await??;
        Ok(Response::new(v1::EndSessionResponse {
            energy_used_mwh: used.0,
        }))
    }
}

/// Marks a payment of the outlet's session as being checked, and clears the mark when dropped.
struct PaymentInFlight<'a>(&'a OutletHandle);

impl<'a> PaymentInFlight<'a> {
    /// Refused with `FAILED_PRECONDITION` when `session_id` is not in progress on the outlet,
    /// and `UNAVAILABLE` (retry) while another payment of it is being checked. The session
    /// counts as offered a payment from now on (no lockout for want of one while the socket
    /// checks it, or cannot: design.md "Trust").
    async fn begin(outlet: &'a OutletHandle, session_id: &str) -> Result<Self, SocketError> {
        let session = session_id.to_owned();
        outlet
            .call(move |task| {
                task.machine
                    .active_session(&session)
                    .map_err(SocketError::wrong_state)?;
                if task.paying {
                    return Err(SocketError::PaymentInFlight(
                        "another payment of this session is being checked; retry".into(),
                    ));
                }
                task.paying = true;
                task.machine.payment_offered(&session);
                Ok(())
            })
            .await??;
        Ok(PaymentInFlight(outlet))
    }
}

impl Drop for PaymentInFlight<'_> {
    fn drop(&mut self) {
        self.0.post(|task| task.paying = false);
    }
}

fn new_session_id() -> String {
    rand::random::<[u8; 16]>().to_lower_hex_string()
}

/// In the outlet's task: open the session on a first request, check a later one belongs to a
/// session of this scheme in progress, and issue the terms of its next payment (terms issued
/// and not paid yet are issued again, not doubled), stored before they leave.
/// The session in progress on `task`'s outlet if it is `cable`'s and has no payment.
fn own_unpaid_session(
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

fn issue_terms(
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

/// Whether `outlet` could open a session for the cable that signed `request` now: the cable
/// not banned, the outlet not locked out, plugged in, and no other cable's session in progress
/// (its own may be resumed). Checked
/// before the opening request is admitted, so that a request for an outlet that cannot take it
/// writes nothing to the store (no `cables` row, no opening sequence). The signature is checked
/// here too (statelessly); [`SocketService::authenticate`] checks it again with the store.
/// Errors: `UNAUTHENTICATED` for a bad signature, `PERMISSION_DENIED` (`CABLE_BANNED`) for a
/// banned cable, `FAILED_PRECONDITION` with the reason.
async fn takes_openings<R: SessionRequest>(
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
    let refusal = outlet.read(move |task| task.opening_refusal(&key)).await?;
    match refusal {
        Some(reason) => Err(SocketError::wrong_state(reason)),
        None => Ok(()),
    }
}
