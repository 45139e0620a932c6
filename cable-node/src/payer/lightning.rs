//! Payer side of the `lightning` scheme (design.md; BOLT 11 via ldk-node): each quota a
//! checked BOLT11 invoice of exactly price × quota, or a keysend carrying the session record
//! (the fast path), recorded before it is sent and never paid twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bitcoin::hex::{DisplayHex, FromHex};
use ln::ldk_node::lightning_types::payment::{PaymentHash, PaymentPreimage};
use proto::units::PriceMsatPerWh;
use proto::v1;

use super::{Cable, CableError, PaymentReport, Session};
use crate::policy::AcceptedOffer;

impl Cable {
    /// The Lightning node, started on first use (with a thread that takes its events).
    pub(super) fn lightning(&mut self) -> anyhow::Result<Arc<ln::ldk_node::Node>> {
        if let Some(ln) = &self.ln {
            return Ok(Arc::clone(ln));
        }
        let settings = ln::LnSettings::default();
        let ln = ln::start_node(&self.data_dir, &self.keys, &self.config.chain, &settings)?;
        let (node, outcomes) = (Arc::clone(&ln), Arc::clone(&self.ln_events));
        std::thread::spawn(move || loop {
            let event = node.wait_next_event();
            tracing::debug!(?event, "Lightning event");
            let outcome = matches!(
                event,
                ln::ldk_node::Event::PaymentSuccessful { .. }
                    | ln::ldk_node::Event::PaymentFailed { .. }
            );
            if node.event_handled().is_err() {
                return;
            }
            if outcome {
                outcomes.notify();
            }
        });
        self.ln = Some(Arc::clone(&ln));
        Ok(ln)
    }
    /// Check a Lightning payment request and pay its invoice: exactly price × quota msat, payee
    /// the offer's node, a payment hash never paid before (unless it is this very payment, asked
    /// again: then its outcome is awaited, not paid twice). Recorded before it is sent.
    pub(super) fn pay_lightning(
        &mut self,
        accepted: &AcceptedOffer,
        session: &mut Session,
        terms: &v1::PowerRequestResponse,
        started: Instant,
    ) -> Result<(), CableError> {
        let refuse = |reason: String| CableError::CableRefusedSocket(format!("terms: {reason}"));
        let offer = &accepted.offer;
        let expected_msat = PriceMsatPerWh(offer.price_msat_per_wh)
            .cost_of(accepted.quota)
            .map_err(|e| refuse(e.to_string()))?
            .0;
        let bolt11 = &proto::terms::lightning_terms(terms)
            .map_err(|e| refuse(e.to_string()))?
            .bolt11_invoice;
        let ln_offer = proto::terms::offered_lightning(offer).map_err(|e| refuse(e.to_string()))?;
        if terms.quota_mwh != offer.quota_mwh || terms.amount_msat != expected_msat {
            return Err(refuse(format!(
                "{} msat for {} mWh is not price x quota = {expected_msat} msat for {} mWh",
                terms.amount_msat, terms.quota_mwh, offer.quota_mwh
            )));
        }
        let recorded = self
            .store
            .ln_payment_of(&session.id, terms.payment_id)
            .context("reading the store")?;
        if let Some((hash, status)) = &recorded {
            if status == "paid" {
                return Err(refuse(format!(
                    "payment {} was already paid (payment hash {hash})",
                    terms.payment_id
                )));
            }
        }
        // A payment being sent when the cable stopped is awaited, not paid again.
        let recorded = recorded
            .filter(|(_, status)| status == "sending")
            .map(|(hash, _)| hash);
        // A new payment only within the session budget (what is pending counts as spent).
        if recorded.is_none()
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
        let store = &self.store;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let invoice = proto::lightning::check_invoice(
            bolt11,
            &ln_offer.node_id,
            expected_msat,
            |hash| recorded.as_deref() != Some(hash) && store.ln_hash_used(hash).unwrap_or(true),
            now,
        )
        .map_err(|e| refuse(e.to_string()))?;
        let hash = proto::lightning::payment_hash_hex(&invoice);
        if recorded.as_deref().is_some_and(|r| r != hash) {
            return Err(refuse(format!(
                "payment {} was already paid with another invoice",
                terms.payment_id
            )));
        }
        self.store
            .sending_ln(&session.id, terms.payment_id, &hash, expected_msat)
            .context("recording the payment")?;
        let ln = self.lightning()?;
        let paid = tokio::task::block_in_place(|| {
            crate::lightning::pay(&ln, &self.ln_events, &invoice, Duration::from_secs(60))
        });
        self.ln_outcome(
            session,
            terms.payment_id,
            &hash,
            expected_msat,
            started,
            paid,
        )
    }
    /// Pay the next quota by keysend (the fast path of design.md `lightning`) when the socket
    /// offers it, the policy allows it, and the session's last Lightning payment was paid (the
    /// first quota goes by invoice: it opens the session). A keysend cut short by a crash is
    /// sent again with its stored preimage. A session resumed after the cable stopped pays its
    /// next quota by invoice until a status shows the socket still has it: a keysend cannot be
    /// refused, and the socket may have ended the session meanwhile (the `PowerRequest` then
    /// says so, and the cable goes on in a new session). `Ok(false)`: not a keysend case, ask
    /// for terms.
    pub(super) fn pay_keysend(
        &mut self,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<bool, CableError> {
        if accepted.scheme != v1::Scheme::Lightning
            || !proto::terms::offered_lightning(&accepted.offer).is_ok_and(|t| t.keysend)
            || !self.config.lightning.keysend
            || session.id.is_empty()
        {
            return Ok(false);
        }
        let last = self
            .store
            .last_ln_payment(&session.id)
            .context("reading the store")?;
        let offer = &accepted.offer;
        let amount_msat = PriceMsatPerWh(offer.price_msat_per_wh)
            .cost_of(accepted.quota)
            .map_err(|e| CableError::CableRefusedSocket(e.to_string()))?
            .0;
        let (payment_id, preimage) = match last {
            // A keysend cut short: the same one again.
            Some(last) if last.status == "sending" && last.keysend_preimage_hex.is_some() => {
                let hex = last.keysend_preimage_hex.unwrap_or_default();
                let preimage = <[u8; 32]>::from_hex(&hex).context("a stored preimage")?;
                (last.payment_id, preimage)
            }
            Some(last) if last.status == "paid" && (!session.resumed || session.seen_in_status) => {
                if !self
                    .config
                    .policy
                    .allows(session.paid, accepted.quota_amount)
                {
                    return Err(CableError::CableRefusedSocket(format!(
                        "paying {} more would pass the session budget of {} sat",
                        accepted.quota_amount, self.config.policy.max_session_sat
                    )));
                }
                let preimage: [u8; 32] = bitcoin::secp256k1::rand::random();
                let hash = PaymentHash::from(PaymentPreimage(preimage)).to_string();
                self.store
                    .sending_keysend(
                        &session.id,
                        last.payment_id + 1,
                        &hash,
                        &preimage.to_lower_hex_string(),
                        amount_msat,
                    )
                    .context("recording the keysend")?;
                (last.payment_id + 1, preimage)
            }
            _ => return Ok(false),
        };
        let hash = PaymentHash::from(PaymentPreimage(preimage)).to_string();
        let ln_offer = proto::terms::offered_lightning(offer)
            .map_err(|e| CableError::CableRefusedSocket(e.to_string()))?;
        let socket = crate::lightning::peer_of(&ln_offer.node_id, &ln_offer.address)?;
        let record = proto::lightning::SessionRecord {
            session_id: session.id.clone(),
            payment_id,
        };
        let auth = self.signer.sign_keysend(
            &record,
            amount_msat,
            &PaymentHash::from(PaymentPreimage(preimage)).0,
        );
        let ln = self.lightning()?;
        let started = Instant::now();
        let paid = tokio::task::block_in_place(|| {
            crate::lightning::keysend(
                &ln,
                &self.ln_events,
                socket.node_id,
                amount_msat,
                &record,
                auth,
                preimage,
                Duration::from_secs(60),
            )
        });
        self.ln_outcome(session, payment_id, &hash, amount_msat, started, paid)?;
        Ok(true)
    }
    /// Record how a Lightning payment ended and report it.
    pub(super) fn ln_outcome(
        &mut self,
        session: &mut Session,
        payment_id: u64,
        hash: &str,
        amount_msat: u64,
        started: Instant,
        paid: Result<u64, crate::lightning::LnPayError>,
    ) -> Result<(), CableError> {
        let fee_msat = match paid {
            Ok(fee) => fee,
            Err(e @ crate::lightning::LnPayError::Failed(_)) => {
                if let Err(e) = self.store.ln_done(hash, "failed", None) {
                    tracing::error!(%hash, "the store did not mark the payment failed: {e}");
                }
                return Err(anyhow::Error::from(e).into());
            }
            // Stays `sending`: counted as spent, and awaited (never paid again) next time.
            Err(e @ crate::lightning::LnPayError::Pending(_)) => {
                tracing::warn!(payment_hash = %hash, "{e}");
                return Err(anyhow::Error::from(e).into());
            }
        };
        let latency = started.elapsed().as_millis() as u64;
        self.store
            .ln_done(hash, "paid", Some(latency))
            .context("recording the payment")?;
        session.paid = self
            .store
            .committed(&session.id)
            .context("reading the store")?;
        session.payments.push(PaymentReport {
            payment_id,
            txid: hash.to_owned(),
            amount_sat: amount_msat.div_ceil(1_000),
            fee_sat: fee_msat.div_ceil(1_000),
            vsize: 0,
            latency_ms: Some(latency),
        });
        tracing::info!(payment_hash = %hash, amount_msat, latency_ms = latency, "Lightning payment sent");
        Ok(())
    }
}
