//! Paying one quota (design.md "Durability before action"): ask for the terms, check them,
//! sign with the scheme's [`Payer`](super::Payer), store, then send; a failed write of the
//! cable's own store is tried again for a while, since nothing left the cable.

use std::time::{Duration, Instant};

use anyhow::Context;
use bitcoin::hex::DisplayHex;
use proto::v1::socket_client::SocketClient;
use proto::v1::{self};
use tonic::transport::Channel;
use wallet::chain::Chain;
use wallet::onchain::NodeWallet;

use super::session::{PaymentReport, Session};
use super::{payer_of, Cable, CableError};
use crate::link::retryable;
use crate::policy::AcceptedOffer;

/// How long a quota's payment waits for the cable's own store to work again.
const STORE_PATIENCE: Duration = Duration::from_secs(10);

impl Cable {
    /// Ask for one quota, check the terms, and pay them (or resend what was signed for them).
    pub(super) async fn pay_quota(
        &mut self,
        client: &mut SocketClient<Channel>,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<(), CableError> {
        if self
            .pay_quota_store_patient(client, accepted, session)
            .await?
        {
            return Ok(());
        }
        // The input set of those terms closed meanwhile (the socket restarted or aged it):
        // the signature is void; ask again, which starts a new set.
        match self.pay_quota_once(client, accepted, session).await? {
            true => Ok(()),
            false => Err(CableError::SocketRefusedCable(
                "the socket keeps closing input sets".into(),
            )),
        }
    }
    /// [`Cable::pay_quota_once`], again after a failed write of the cable's own store (nothing
    /// left the cable: every signature is stored before it is sent), for up to
    /// `STORE_PATIENCE`: a store that works again lets the session go on.
    async fn pay_quota_store_patient(
        &mut self,
        client: &mut SocketClient<Channel>,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<bool, CableError> {
        let deadline = Instant::now() + STORE_PATIENCE;
        loop {
            match self.pay_quota_once(client, accepted, session).await {
                Err(CableError::Other(e))
                    if Instant::now() < deadline
                        && e.chain().any(|c| c.is::<rusqlite::Error>()) =>
                {
                    tracing::warn!("the cable's store failed, trying again: {e:#}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                done => return done,
            }
        }
    }
    /// One attempt of [`Cable::pay_quota`]; `Ok(false)` when the terms' input set closed.
    async fn pay_quota_once(
        &mut self,
        client: &mut SocketClient<Channel>,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<bool, CableError> {
        // Latency of a quota: from the cable's request to the socket's credit.
        let quota_started = Instant::now();
        if self.pay_keysend(accepted, session)? {
            return Ok(true);
        }
        let terms = self.request_terms(client, accepted, session).await?;
        if session.id.is_empty() {
            session.id = terms.session_id.clone();
            self.store
                .open_session(
                    &session.id,
                    &accepted.offer.socket_identity_key.to_lower_hex_string(),
                    &self.config.outlet_id,
                    &accepted.offer.payout_script,
                )
                .context("storing the session")?;
        } else if terms.session_id != session.id {
            return Err(CableError::CableRefusedSocket(format!(
                "terms for session {} while session {} is in progress",
                terms.session_id, session.id
            )));
        }
        // A resumed session's terms are checked against the offer it opened with.
        let opened_with;
        let accepted = match &session.payout_script {
            Some(script) if *script != accepted.offer.payout_script => {
                let mut offer = accepted.clone();
                offer.offer.payout_script = script.clone();
                opened_with = offer;
                &opened_with
            }
            _ => accepted,
        };
        if accepted.scheme == v1::Scheme::Lightning {
            self.pay_lightning(accepted, session, &terms, quota_started)?;
            return Ok(true);
        }
        // A payment signed before (and maybe taken) is already counted: sending it again
        // spends nothing new.
        let resend = self
            .store
            .payment(&session.id, terms.payment_id)
            .context("reading the store")?
            .is_some();
        if !resend
            && !self
                .config
                .policy
                .allows(session.paid, accepted.quota_amount)
        {
            return Err(CableError::CableRefusedSocket(format!(
                "paying {} more would pass the session budget of {} sat",
                accepted.quota_amount, self.config.policy.max_session_sat
            )));
        }
        let record = match self
            .store
            .payment(&session.id, terms.payment_id)
            .context("reading the store")?
        {
            Some(record) => {
                tracing::info!(
                    payment_id = terms.payment_id,
                    "sending the payment signed before again"
                );
                if accepted.scheme == v1::Scheme::Onchain {
                    // Spent for the wallet before it leaves again: the cable may have stopped
                    // between storing the signature and telling the wallet
                    // (`onchain::sign`); recording it twice changes nothing.
                    let tx = bitcoin::psbt::Psbt::deserialize(&record.psbt)
                        .context("a stored payment's PSBT")?
                        .unsigned_tx;
                    tokio::task::block_in_place(|| self.wallet.record_sent(&tx))
                        .map_err(anyhow::Error::from)?;
                }
                record
            }
            None => payer_of(accepted.scheme)
                .ok_or_else(|| {
                    CableError::CableRefusedSocket(format!(
                        "terms: {} is not paid with PayTransaction",
                        accepted.scheme.as_str_name()
                    ))
                })?
                .sign(self, session, &terms, accepted)?,
        };
        let reply = loop {
            let request = self.signer.sign(
                &accepted.socket,
                v1::PayTransactionRequest {
                    session_id: session.id.clone(),
                    payment_id: terms.payment_id,
                    psbt: record.psbt.clone(),
                    auth: None,
                },
            );
            match client.pay_transaction(request).await {
                Ok(reply) => break reply.into_inner(),
                Err(status) if retryable(&status) => {
                    tracing::warn!("PayTransaction: {}; resending", status.message());
                    // The socket may be waiting on its chain (or on blocks, past its limit of
                    // unconfirmed payments): do not hammer it.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    *client = self.link.reconnect_client().await?;
                }
                Err(status)
                    if proto::errors::reason_of(&status)
                        == Some(v1::ErrorReason::InputSetClosed) =>
                {
                    tracing::warn!(payment_id = terms.payment_id, "{}", status.message());
                    let _ = self
                        .store
                        .set_status(&session.id, terms.payment_id, "refused");
                    return Ok(false);
                }
                Err(status) => {
                    let _ = self
                        .store
                        .set_status(&session.id, terms.payment_id, "refused");
                    return Err(CableError::SocketRefusedCable(status.message().to_owned()));
                }
            }
        };
        if reply.txid != record.txid.to_string() {
            return Err(CableError::CableRefusedSocket(format!(
                "the socket reports transaction {} for our payment {}",
                reply.txid, record.txid
            )));
        }
        // Bookkeeping only: the signature is stored (`signed`) and counts as committed either
        // way, so a failed write here does not stop the session.
        if let Err(e) = self
            .store
            .set_status(&session.id, terms.payment_id, "accepted")
        {
            tracing::warn!(payment_id = terms.payment_id, "storing the acceptance: {e}");
        }
        let report = PaymentReport {
            payment_id: record.payment_id,
            txid: record.txid.to_string(),
            amount_sat: record.amount.to_sat(),
            fee_sat: record.fee.to_sat(),
            vsize: record.vsize,
            latency_ms: Some(quota_started.elapsed().as_millis() as u64),
        };
        if accepted.scheme == v1::Scheme::Onchain {
            // The wallet counts it spent since it was signed (`onchain::sign`).
            session.onchain_txs.push(report.clone());
        }
        session.paid = self
            .store
            .committed(&session.id)
            .context("reading the store")?;
        session.payments.push(report);
        tracing::info!(txid = %record.txid, amount = %record.amount, fee = %record.fee, "payment accepted");
        Ok(true)
    }
}

/// Sync `wallet` before signing a payment, trying again each second while bitcoind does not
/// answer, for up to `patience` (`session.reconnect_secs`: bitcoind restarting is no reason to
/// give up a session). Blocking: call inside `block_in_place`.
pub(super) fn sync_for_payment(
    wallet: &mut NodeWallet,
    chain: &Chain,
    patience: Duration,
) -> Result<(), wallet::WalletError> {
    let deadline = Instant::now() + patience;
    loop {
        match wallet.sync(chain) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!("bitcoind unreachable, syncing again: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}
