//! Payer side of the `onchain` scheme (paper seed 000 §V): one transaction per quota, built by
//! the cable's wallet to pay exactly the terms, checked with the socket's own rule, stored
//! before it is sent.

use anyhow::Context;
use proto::rules::{check_onchain_payment, OnchainTerms};
use proto::terms::check_terms;
use proto::v1;

use super::{Cable, CableError, Payer, Session};
use crate::policy::AcceptedOffer;
use crate::store::SignedRecord;

/// The payer of `onchain`.
pub(super) struct Onchain;

impl Payer for Onchain {
    fn sign(
        &self,
        cable: &mut Cable,
        session: &mut Session,
        terms: &v1::PowerRequestResponse,
        accepted: &AcceptedOffer,
    ) -> Result<SignedRecord, CableError> {
        let checked = check_terms(&accepted.offer, terms)
            .map_err(|e| CableError::CableRefusedSocket(format!("terms: {e}")))?;
        let fee_rate = cable.config.policy.fee_rate_for(accepted);
        cable.sign(&session.id, terms.payment_id, &checked, fee_rate)
    }
}

impl Cable {
    /// Build, check, sign and store a payment of the checked terms at `fee_rate`.
    pub(super) fn sign(
        &mut self,
        session_id: &str,
        payment_id: u64,
        terms: &OnchainTerms,
        fee_rate: bitcoin::FeeRate,
    ) -> Result<SignedRecord, CableError> {
        let policy = &self.config.policy;
        let patience = std::time::Duration::from_secs(self.config.session.reconnect_secs);
        let signed = tokio::task::block_in_place(|| {
            super::pay::sync_for_payment(&mut self.wallet, &self.chain, patience)?;
            self.wallet.pay(
                &terms.payout_script,
                terms.amount,
                fee_rate,
                policy.max_fee(),
            )
        })
        .map_err(anyhow::Error::from)?;
        // The same rule the socket applies: exactly the terms, in one output.
        check_onchain_payment(&signed.tx, terms)
            .map_err(|e| anyhow::anyhow!("built a wrong payment: {e}"))?;
        let record = SignedRecord {
            payment_id,
            txid: signed.tx.compute_txid(),
            amount: terms.amount,
            fee: signed.fee,
            vsize: signed.tx.vsize() as u64,
            status: "signed".into(),
            psbt: signed.psbt.serialize(),
        };
        // Durable before the signature leaves the cable.
        self.store
            .record_signed(session_id, &record)
            .context("storing the signed payment")?;
        // Spent, for the wallet, from now on (design.md "Trust"): whatever the socket answers,
        // it holds this signature and may broadcast it, so no later payment may be built from
        // other coins beside it; only a transaction spending its inputs elsewhere frees them.
        tokio::task::block_in_place(|| self.wallet.record_sent(&signed.tx))
            .map_err(anyhow::Error::from)?;
        Ok(record)
    }
}
