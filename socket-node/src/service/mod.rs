//! The gRPC service `t2t.v1.Socket` (paper seed 000 Table I; design.md "Payment schemes"):
//! offers, status, the plug-in link, and requests and payments routed to their outlet and
//! dispatched to the seller side of their scheme ([`crate::seller`]).

use std::sync::Arc;

use proto::v1::socket_server::Socket;
use proto::v1::{self};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::SocketError;
use crate::outlet::terms::{new_session_id, Opened};
use crate::outlet::OutletHandle;
use crate::seller::{seller_of, spillman, Refusal, Verdict};
use crate::station::Station;
use crate::store::{Authorized, CableAuth, PaymentStatus};

mod checks;

use checks::{offered_scheme, takes_openings, PaymentInFlight};

/// The tonic service over a running [`Station`].
pub struct SocketService(pub Arc<Station>);

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
            let session = outlet.session_of_cable(key.to_string()).await?;
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
        let issued = outlet.issue_terms(scheme, request, cable).await?;
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
        let in_flight = PaymentInFlight::begin(outlet, session_id).await?;
        let verdict = seller_of(scheme)
            .pay(
                &self.context(outlet),
                session_id,
                payment_id,
                &request.psbt,
                terms,
            )
            .await;
        let applied = apply(outlet, session_id, verdict).await;
        // Judged and not credited (not for want of a check): no longer a payment waiting on
        // the socket.
        in_flight.end(matches!(&applied, Err(e) if !matches!(e, SocketError::Unavailable(_))));
        let (credit, state) = applied?;
        crate::metrics::METRICS.payment_credited(scheme, arrived.elapsed());
        Ok(Response::new(v1::PayTransactionResponse {
            txid: credit.txid,
            quota_credited_mwh: credit.quota.0,
            state: state as i32,
        }))
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
        // is ended before the new one opens (socket.proto `OpenChannel`). One outlet command.
        let session_id = new_session_id();
        let opened = outlet
            .open_for_channel(
                session_id.clone(),
                scheme,
                cable,
                request.deposit_txid.clone(),
            )
            .await?;
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
                outlet.abandon(session_id, error.to_string()).await;
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
        let in_progress = outlet.in_progress(request.session_id.clone()).await?;
        let funded = spillman::fund(&cx, &request, in_progress).await;
        match funded {
            Ok(deposit_txid) => Ok(Response::new(v1::FundChannelResponse { deposit_txid })),
            // Not checked (bitcoind, the store): no blame, the cable hands it over again.
            Err(Refusal::Unavailable(reason)) => Err(SocketError::unavailable(reason).into()),
            // Mempool policy, an input not found: refused, nobody blamed.
            Err(Refusal::Policy(reason)) => Err(SocketError::invalid(reason).into()),
            // A bad deposit for the session in progress locks out; one naming another session
            // is only refused (it must not lock out someone else's session).
            Err(Refusal::Cheat(reason))
                if in_progress
                    && outlet
                        .lock_out(request.session_id.clone(), reason.clone())
                        .await =>
            {
                Err(SocketError::Cheat(reason).into())
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
        let used = outlet.end_session(request.session_id).await?;
        Ok(Response::new(v1::EndSessionResponse {
            energy_used_mwh: used.0,
        }))
    }
}

/// Apply a seller's verdict on a payment of `session_id` to its outlet: credit its quota, or
/// lock out on a cheat (the verdict's reason is the proof: design.md "Blame needs proof"), or
/// pass the refusal on. Returns the payment and the outlet's state. A payment persisted whose
/// session ended before its credit (unplugged meanwhile) was taken all the same: it is
/// recorded with its session and sent, so the reply says so (with the outlet's state now),
/// lest the cable spend its inputs again. A cheat found when its session had already ended
/// locks nothing out and is refused as such. Errors: the refusal.
async fn apply(
    outlet: &OutletHandle,
    session_id: &str,
    verdict: Verdict,
) -> Result<(crate::seller::Credit, v1::OutletState), SocketError> {
    match verdict {
        Ok(credit) => {
            let credited = outlet
                .credit(session_id.to_owned(), credit.quota, credit.txid.clone())
                .await;
            match credited {
                Ok(()) => Ok((credit, v1::OutletState::Paid)),
                Err(SocketError::WrongState(why)) => {
                    tracing::warn!(outlet = outlet.id(), session = session_id, txid = %credit.txid, "payment recorded for a session that ended meanwhile: {why}");
                    let state = outlet
                        .snapshot()
                        .await
                        .ok()
                        .and_then(|(status, _)| v1::OutletState::try_from(status.state).ok())
                        .unwrap_or(v1::OutletState::Standby);
                    Ok((credit, state))
                }
                Err(e) => Err(e),
            }
        }
        Err(SocketError::Cheat(reason)) => {
            if outlet.lock_out(session_id.to_owned(), reason.clone()).await {
                Err(SocketError::Cheat(reason))
            } else {
                Err(SocketError::wrong_state(format!(
                    "refused, the session having ended: {reason}"
                )))
            }
        }
        Err(refused) => Err(refused),
    }
}
