//! The gRPC service `t2t.v1.Socket`: the seller side of the `onchain` scheme (paper seed 000
//! §V, Table I; design.md "Payment schemes" and "Trust").
//!
//! Every message from the cable is hostile until checked. A payment that breaks a rule is
//! refused with the reason and locks the outlet out; one that passes is persisted, then
//! broadcast, then credited, in that order, so no crash can credit energy that was not paid or
//! lose a payment that was.

use std::sync::Arc;

use bitcoin::hex::DisplayHex;
use bitcoin::secp256k1::rand;
use bitcoin::{Amount, Transaction};
use proto::rules::{check_onchain_payment, decode_payment, OnchainTerms};
use proto::v1::socket_server::Socket;
use proto::v1::{self, OutletState};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::node::SocketNode;
use crate::store::StoredTerms;

/// The tonic service over a running [`SocketNode`].
pub struct SocketService(pub Arc<SocketNode>);

/// Why a payment was refused: the cable's fault (lock out) or ours (do not).
enum Refusal {
    /// The payment breaks a rule: refuse and lock out.
    Cheat(String),
    /// We could not check it (bitcoind down, store error): refuse without blame.
    Unavailable(String),
}

impl SocketService {
    fn check_outlet(&self, outlet_id: &str) -> Result<(), Status> {
        if outlet_id != self.0.config.outlet.id {
            return Err(Status::not_found(format!("no outlet {outlet_id:?} here")));
        }
        Ok(())
    }

    /// Lock the outlet out for a refused payment, record why, and build the error reply.
    fn lock_out(&self, session_id: &str, reason: &str) -> Status {
        let node = &self.0;
        tracing::warn!(session = %session_id, %reason, "payment refused: lockout");
        let mut inner = node.inner();
        let events = inner.outlet.lock_out(reason, node.clock.now_ms());
        let _ = node.store().audit(
            &node.config.outlet.id,
            Some(session_id),
            "payment-refused",
            reason,
        );
        node.apply(&mut inner, events);
        Status::permission_denied(format!("payment refused, outlet locked out: {reason}"))
    }

    /// Checks against the chain: every input unspent on this chain, bitcoind would accept the
    /// transaction, the fee rate is at least the minimum. Returns the fee and vsize.
    fn check_on_chain(node: &SocketNode, tx: &Transaction) -> Result<(Amount, u64), Refusal> {
        let unavailable = |e: wallet::WalletError| Refusal::Unavailable(e.to_string());
        for input in &tx.input {
            if node
                .chain
                .unspent_value(input.previous_output)
                .map_err(unavailable)?
                .is_none()
            {
                return Err(Refusal::Cheat(format!(
                    "input {} is not an unspent output on this {} chain (wrong network, never \
                     broadcast, or already spent)",
                    input.previous_output, node.config.network
                )));
            }
        }
        let verdict = node.chain.test_mempool_accept(tx).map_err(unavailable)?;
        if !verdict.allowed {
            return Err(Refusal::Cheat(format!(
                "bitcoind refuses the transaction: {}",
                verdict.reject_reason
            )));
        }
        let min_rate = node.config.outlet.min_fee_rate_sat_per_vb;
        if verdict.fee.to_sat() < min_rate * verdict.vsize {
            return Err(Refusal::Cheat(format!(
                "fee {} for {} vB is below {min_rate} sat/vB",
                verdict.fee, verdict.vsize
            )));
        }
        Ok((verdict.fee, verdict.vsize))
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
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
        if request.scheme != v1::Scheme::Onchain as i32 {
            return Err(Status::invalid_argument(format!(
                "scheme {} is not offered here; the offer lists SCHEME_ONCHAIN",
                request.scheme
            )));
        }
        let node = &self.0;
        let amount = node.quota_amount();
        let quota = proto::units::EnergyMwh(node.config.outlet.quota_mwh);
        let mut inner = node.inner();
        node.tick_locked(&mut inner);
        let now = node.clock.now_ms();
        let meter = inner.last_reading.energy;
        let session_id = if request.session_id.is_empty() {
            let id = rand::random::<[u8; 16]>().to_lower_hex_string();
            inner
                .outlet
                .open_session(id.clone(), now, meter)
                .map_err(Status::failed_precondition)?;
            node.store()
                .open_session(&id, &node.config.outlet.id, "onchain")
                .map_err(internal)?;
            tracing::info!(session = %id, "session opened");
            id
        } else {
            request.session_id.clone()
        };
        let session = inner
            .outlet
            .active_session(&session_id)
            .map_err(Status::failed_precondition)?;
        let store = node.store();
        // Terms issued but not paid yet are issued again, not doubled.
        let unpaid = session.last_payment_id > 0
            && store
                .payment(&session_id, session.last_payment_id)
                .map_err(internal)?
                .is_none_or(|p| p.status == "failed");
        let payment_id = if unpaid {
            session.last_payment_id
        } else {
            session.last_payment_id += 1;
            store
                .issue_terms(
                    &session_id,
                    session.last_payment_id,
                    StoredTerms { amount, quota },
                )
                .map_err(internal)?;
            session.last_payment_id
        };
        Ok(Response::new(v1::PowerRequestResponse {
            session_id,
            payment_id,
            scheme: v1::Scheme::Onchain as i32,
            amount_msat: amount.to_sat() * 1_000,
            quota_mwh: quota.0,
            payout_script: node.payout_script.to_bytes(),
        }))
    }

    async fn pay_transaction(
        &self,
        request: Request<v1::PayTransactionRequest>,
    ) -> Result<Response<v1::PayTransactionResponse>, Status> {
        let request = request.into_inner();
        let node = Arc::clone(&self.0);
        let _serial = node.pay_lock.lock().await;
        let (session_id, payment_id) = (request.session_id.clone(), request.payment_id);

        // A payment already recorded is answered again, never credited again.
        let recorded = node
            .store()
            .payment(&session_id, payment_id)
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
            .terms(&session_id, payment_id)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "no terms were issued for payment {payment_id} of session {session_id}"
                ))
            })?;
        node.inner()
            .outlet
            .active_session(&session_id)
            .map_err(Status::failed_precondition)?;

        let tx = match decode_payment(&request.psbt) {
            Ok(tx) => tx,
            Err(e) => return Err(self.lock_out(&session_id, &e.to_string())),
        };
        let onchain_terms = OnchainTerms {
            payout_script: node.payout_script.clone(),
            amount: terms.amount,
            quota: terms.quota,
        };
        if let Err(e) = check_onchain_payment(&tx, &onchain_terms) {
            return Err(self.lock_out(&session_id, &e.to_string()));
        }
        let checked = {
            let node = Arc::clone(&node);
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || Self::check_on_chain(&node, &tx))
                .await
                .map_err(internal)?
        };
        let (fee, vsize) = match checked {
            Ok(checked) => checked,
            Err(Refusal::Cheat(reason)) => return Err(self.lock_out(&session_id, &reason)),
            Err(Refusal::Unavailable(reason)) => {
                return Err(Status::unavailable(format!(
                    "cannot check the payment now: {reason}"
                )))
            }
        };

        // Persist, then broadcast, then credit.
        node.store()
            .accept_payment(&session_id, payment_id, &tx, terms, fee, vsize)
            .map_err(internal)?;
        let broadcast = {
            let node = Arc::clone(&node);
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || node.chain.broadcast(&tx))
                .await
                .map_err(internal)?
        };
        let txid = match broadcast {
            Ok(txid) => txid,
            Err(e) => {
                node.store()
                    .set_payment_status(&session_id, payment_id, "failed")
                    .map_err(internal)?;
                return Err(self.lock_out(&session_id, &format!("broadcast failed: {e}")));
            }
        };
        node.store()
            .set_payment_status(&session_id, payment_id, "broadcast")
            .map_err(internal)?;
        let mut inner = node.inner();
        let events = inner
            .outlet
            .credit(&session_id, terms.quota)
            .map_err(Status::failed_precondition)?;
        node.apply(&mut inner, events);
        tracing::info!(%txid, session = %session_id, payment_id, quota = %terms.quota, "payment credited");
        let _ = node.store().audit(
            &node.config.outlet.id,
            Some(&session_id),
            "payment-credited",
            &txid.to_string(),
        );
        Ok(Response::new(v1::PayTransactionResponse {
            txid: txid.to_string(),
            quota_credited_mwh: terms.quota.0,
            state: OutletState::Paid as i32,
        }))
    }
}
