//! The gRPC service `t2t.v1.Socket` (paper seed 000 Table I; design.md "Payment schemes"):
//! offers, status, the plug-in link, and requests and payments dispatched to the seller side of
//! their scheme ([`crate::seller`]).

use std::sync::Arc;

use bitcoin::hex::DisplayHex;
use bitcoin::secp256k1::rand;
use proto::v1::socket_server::Socket;
use proto::v1::{self};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::config::SchemeName;
use crate::node::SocketNode;
use crate::seller::{internal, lightning, onchain, single_fee, spillman};
use crate::store::StoredTerms;

/// The tonic service over a running [`SocketNode`].
pub struct SocketService(pub Arc<SocketNode>);

impl SocketService {
    fn check_outlet(&self, outlet_id: &str) -> Result<(), Status> {
        if outlet_id != self.0.config.outlet.id {
            return Err(Status::not_found(format!("no outlet {outlet_id:?} here")));
        }
        Ok(())
    }

    /// The scheme of a request, if the outlet offers it.
    fn offered_scheme(&self, scheme: i32) -> Result<SchemeName, Status> {
        self.0
            .config
            .outlet
            .schemes
            .iter()
            .copied()
            .find(|s| s.to_proto() as i32 == scheme)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "scheme {scheme} is not offered here; see GetOffer"
                ))
            })
    }
}

#[tonic::async_trait]
impl Socket for SocketService {
    async fn get_offer(
        &self,
        request: Request<v1::GetOfferRequest>,
    ) -> Result<Response<v1::GetOfferResponse>, Status> {
        self.check_outlet(&request.get_ref().outlet_id)?;
        Ok(Response::new(self.0.offer.clone()))
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        self.check_outlet(&request.get_ref().outlet_id)?;
        Ok(Response::new(self.0.snapshot().0))
    }

    type WatchStatusStream = ReceiverStream<Result<v1::WatchStatusResponse, Status>>;

    async fn watch_status(
        &self,
        request: Request<v1::WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        self.check_outlet(&request.get_ref().outlet_id)?;
        let node = Arc::clone(&self.0);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // Counted as plugged in from now on, before the reply, so a PowerRequest that follows
        // finds the cable plugged in.
        let (mut events, plugged) = node.watch();
        tokio::spawn(async move {
            let _plugged = plugged;
            let (status, low) = node.snapshot();
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
        self.check_outlet(&request.outlet_id)?;
        let scheme = self.offered_scheme(request.scheme)?;
        let node = &self.0;
        let mut inner = node.inner();
        node.tick_locked(&mut inner);
        let now = node.clock.now_ms();
        let meter = inner.last_reading.energy;
        let session_id = if request.session_id.is_empty() {
            if scheme == SchemeName::Spillman {
                return Err(Status::failed_precondition(
                    "a spillman session opens with OpenChannel",
                ));
            }
            open_session(node, &mut inner, scheme, now, meter)?
        } else {
            let stored = node
                .store()
                .session_scheme(&request.session_id)
                .map_err(internal)?;
            if stored.as_deref() != Some(scheme.name()) {
                return Err(Status::failed_precondition(format!(
                    "session {} does not pay with {}",
                    request.session_id,
                    scheme.name()
                )));
            }
            request.session_id.clone()
        };
        let last_payment_id = inner
            .outlet
            .active_session(&session_id)
            .map_err(Status::failed_precondition)?
            .last_payment_id;
        // Terms issued but not paid yet are issued again, not doubled.
        let unpaid = {
            let store = node.store();
            let paid_on_chain = store
                .payment(&session_id, last_payment_id)
                .map_err(internal)?
                .is_some_and(|p| p.status != "failed");
            let paid_over_ln = store
                .ln_payment_received(&session_id, last_payment_id)
                .map_err(internal)?;
            if paid_on_chain || paid_over_ln {
                None
            } else {
                store
                    .terms(&session_id, last_payment_id)
                    .map_err(internal)?
            }
        };
        // Single-fee terms of a set that closed meanwhile (full, aged, or broadcast at a
        // restart) are not issued again: the next payment starts a new set.
        let reusable = |terms: &StoredTerms| match terms.single_fee {
            None => true,
            Some((index, _)) => inner
                .set
                .as_ref()
                .is_some_and(|set| set.session_id == session_id && set.index == index),
        };
        let (payment_id, terms) = match unpaid {
            Some(terms) if last_payment_id > 0 && reusable(&terms) => (last_payment_id, terms),
            _ => {
                let terms = match scheme {
                    SchemeName::Onchain => onchain::new_terms(node),
                    SchemeName::Lightning => lightning::new_terms(node),
                    SchemeName::Spillman => spillman::new_terms(node),
                    SchemeName::SingleFee => single_fee::new_terms(
                        node,
                        &mut inner,
                        &session_id,
                        request.max_amount_sat,
                    )?,
                };
                let payment_id = last_payment_id + 1;
                node.store()
                    .issue_terms(&session_id, payment_id, terms)
                    .map_err(internal)?;
                inner
                    .outlet
                    .active_session(&session_id)
                    .map_err(Status::failed_precondition)?
                    .last_payment_id = payment_id;
                (payment_id, terms)
            }
        };
        let reply = match scheme {
            SchemeName::Onchain => onchain::reply(node, session_id, payment_id, terms),
            SchemeName::Spillman => spillman::reply(node, session_id, payment_id, terms)?,
            // ldk-node's calls are synchronous: let the runtime move other tasks off this
            // worker meanwhile.
            SchemeName::Lightning => tokio::task::block_in_place(|| {
                lightning::reply(node, session_id, payment_id, terms)
            })?,
            SchemeName::SingleFee => {
                single_fee::reply(node, &inner, session_id, payment_id, terms)?
            }
        };
        Ok(Response::new(reply))
    }

    async fn pay_transaction(
        &self,
        request: Request<v1::PayTransactionRequest>,
    ) -> Result<Response<v1::PayTransactionResponse>, Status> {
        let request = request.into_inner();
        let node = Arc::clone(&self.0);
        let _serial = node.pay_lock.lock().await;
        let (session_id, payment_id) = (request.session_id.as_str(), request.payment_id);

        // A payment already recorded is answered again, never credited again.
        let recorded = node
            .store()
            .payment(session_id, payment_id)
            .map_err(internal)?;
        if let Some(payment) = recorded.filter(|p| p.status != "failed") {
            let state = node.inner().outlet.state();
            return Ok(Response::new(v1::PayTransactionResponse {
                txid: payment.tx.compute_txid().to_string(),
                quota_credited_mwh: payment.quota.0,
                state: state as i32,
            }));
        }
        let terms = node
            .store()
            .terms(session_id, payment_id)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "no terms were issued for payment {payment_id} of session {session_id}"
                ))
            })?;
        node.inner()
            .outlet
            .active_session(session_id)
            .map_err(Status::failed_precondition)?;
        if node
            .store()
            .invoice_of(session_id, payment_id)
            .map_err(internal)?
            .is_some()
        {
            return Err(Status::invalid_argument(
                "this payment is a Lightning invoice: pay it over Lightning",
            ));
        }
        let spillman = node
            .store()
            .session_scheme(session_id)
            .map_err(internal)?
            .as_deref()
            == Some(SchemeName::Spillman.name());
        let reply = match terms.single_fee {
            None if spillman => {
                spillman::pay(&node, session_id, payment_id, &request.psbt, terms).await?
            }
            None => onchain::pay(&node, session_id, payment_id, &request.psbt, terms).await?,
            Some(_) => single_fee::pay(&node, session_id, payment_id, &request.psbt, terms).await?,
        };
        Ok(Response::new(reply))
    }

    async fn open_channel(
        &self,
        request: Request<v1::OpenChannelRequest>,
    ) -> Result<Response<v1::OpenChannelResponse>, Status> {
        let request = request.into_inner();
        self.check_outlet(&request.outlet_id)?;
        let scheme = self.offered_scheme(v1::Scheme::Spillman as i32)?;
        let node = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut inner = node.inner();
            node.tick_locked(&mut inner);
            let (now, meter) = (node.clock.now_ms(), inner.last_reading.energy);
            let session_id = open_session(&node, &mut inner, scheme, now, meter)?;
            drop(inner);
            spillman::open(&node, &session_id, &request).map_err(|reason| {
                // Nothing was signed: end the session it opened, without blame.
                let mut inner = node.inner();
                let events = inner
                    .outlet
                    .abandon(&session_id, &format!("channel refused: {reason}"));
                node.apply(&mut inner, events);
                Status::invalid_argument(format!("channel refused: {reason}"))
            })
        })
        .await
        .map_err(internal)?
        .map(Response::new)
    }

    async fn fund_channel(
        &self,
        request: Request<v1::FundChannelRequest>,
    ) -> Result<Response<v1::FundChannelResponse>, Status> {
        let request = request.into_inner();
        let node = Arc::clone(&self.0);
        let session_id = request.session_id.clone();
        let funded = tokio::task::spawn_blocking(move || spillman::fund(&node, &request))
            .await
            .map_err(internal)?;
        let in_progress = self.0.inner().outlet.active_session(&session_id).is_ok();
        match funded {
            Ok(deposit_txid) => Ok(Response::new(v1::FundChannelResponse { deposit_txid })),
            // A bad deposit for the session in progress locks out; one naming another session
            // is only refused (it must not lock out someone else's session).
            Err(reason) if in_progress => {
                Err(crate::seller::lock_out(&self.0, &session_id, &reason))
            }
            Err(reason) => Err(Status::failed_precondition(reason)),
        }
    }
}

/// Open a session of `scheme` on the outlet and in the store.
fn open_session(
    node: &SocketNode,
    inner: &mut crate::node::Inner,
    scheme: SchemeName,
    now: u64,
    meter: proto::units::EnergyMwh,
) -> Result<String, Status> {
    let id = rand::random::<[u8; 16]>().to_lower_hex_string();
    inner
        .outlet
        .open_session(id.clone(), now, meter)
        .map_err(Status::failed_precondition)?;
    node.store()
        .open_session(&id, &node.config.outlet.id, scheme.name())
        .map_err(internal)?;
    tracing::info!(session = %id, scheme = scheme.name(), "session opened");
    Ok(id)
}
