//! Payer side of the `single-fee` scheme (paper seed 000 §VI, Table II): the first payment of
//! an input set fixes its inputs and fee; each later one pays one increment more over the same
//! inputs. The raised value is stored before its signature leaves the cable.

use anyhow::Context;
use bitcoin::Amount;
use proto::single_fee::{value_paid, BuyerSet, SetTerms};
use proto::terms::check_quota;
use proto::v1;
use proto::Scheme;

use super::{Cable, CableError, Payer, PaymentReport, Session};
use crate::policy::AcceptedOffer;
use crate::store::{CableSet, SignedRecord};

/// The payer of `single-fee`.
pub(super) struct SingleFee;

impl Payer for SingleFee {
    fn sign(
        &self,
        cable: &mut Cable,
        session: &mut Session,
        terms: &v1::PowerRequestResponse,
        accepted: &AcceptedOffer,
    ) -> Result<SignedRecord, CableError> {
        cable.sign_single_fee(session, terms, accepted)
    }
}

impl Cable {
    /// Check single-fee terms and sign them (paper seed 000 §VI, Table II): a new input set when
    /// the socket starts one, else one increment more over the set's inputs and fee. The
    /// signature is stored with the raised value before it leaves the cable.
    pub(super) fn sign_single_fee(
        &mut self,
        session: &mut Session,
        terms: &v1::PowerRequestResponse,
        accepted: &AcceptedOffer,
    ) -> Result<SignedRecord, CableError> {
        let refuse =
            |e: proto::rules::RuleError| CableError::CableRefusedSocket(format!("terms: {e}"));
        let reply = terms;
        let terms = proto::terms::single_fee_terms(reply).map_err(refuse)?;
        let increment = accepted.quota_amount;
        let current = self
            .store
            .current_set(&session.id)
            .context("reading the store")?;
        if terms.inputs.is_empty() {
            // The socket starts a new input set: exactly one increment, no fee fixed yet, a
            // maximum within the policy.
            let checked = check_quota(&accepted.offer, reply, Scheme::SingleFee).map_err(refuse)?;
            let value = Amount::from_sat(terms.value_sat);
            if value != increment || terms.fee_sat != 0 {
                return Err(refuse(proto::rules::RuleError::Value {
                    expected: increment,
                    got: value,
                }));
            }
            let max = Amount::from_sat(terms.max_amount_sat);
            if max > accepted.single_fee_max || max < increment {
                return Err(refuse(proto::rules::RuleError::AboveMax {
                    value: max,
                    max: accepted.single_fee_max,
                }));
            }
            if let Some(old) = &current {
                self.settle_set(session, old)?;
            }
            let policy = &self.config.policy;
            let patience = std::time::Duration::from_secs(self.config.session.reconnect_secs);
            let payout = checked.payout_script;
            let signed = tokio::task::block_in_place(|| {
                super::pay::sync_for_payment(&mut self.wallet, &self.chain, patience)?;
                let (inputs, fee) = self.wallet.plan_input_set(
                    &payout,
                    max,
                    policy.fee_rate_for(accepted),
                    policy.max_fee(),
                )?;
                let signed = self.wallet.pay_from(&inputs, &payout, value, fee)?;
                Ok::<_, wallet::WalletError>((inputs, signed))
            })
            .map_err(anyhow::Error::from)?;
            let (mut inputs, signed) = signed;
            inputs.sort();
            Self::check_pays(&signed.tx, &payout, value)?;
            let index = self
                .store
                .last_set_index(&session.id)
                .context("reading the store")?
                + 1;
            let set = CableSet {
                session_id: session.id.clone(),
                index,
                inputs,
                fee: signed.fee,
                max,
                increment,
                payout_script: payout,
                highest: value,
                highest_payment_id: reply.payment_id,
            };
            let record = Self::record_of(reply.payment_id, increment, &signed);
            self.store
                .open_set(&set, &record)
                .context("storing the input set")?;
            tracing::info!(set = set.index, %max, inputs = set.inputs.len(), fee = %set.fee, "input set opened");
            return Ok(record);
        }
        let set = current.ok_or_else(|| {
            CableError::CableRefusedSocket(
                "terms: the socket continues an input set this cable never opened".into(),
            )
        })?;
        let buyer = BuyerSet {
            terms: SetTerms {
                payout_script: set.payout_script.clone(),
                increment: set.increment,
                max: set.max,
            },
            inputs: set.inputs.clone(),
            fee: set.fee,
            highest: set.highest,
        };
        let value = buyer.check_next(reply).map_err(refuse)?;
        let signed = tokio::task::block_in_place(|| {
            self.wallet
                .pay_from(&set.inputs, &set.payout_script, value, set.fee)
        })
        .map_err(anyhow::Error::from)?;
        Self::check_pays(&signed.tx, &set.payout_script, value)?;
        let record = Self::record_of(reply.payment_id, increment, &signed);
        self.store
            .raise_set(&set, value, &record)
            .context("storing the raised value")?;
        Ok(record)
    }
    pub(super) fn check_pays(
        tx: &bitcoin::Transaction,
        payout: &bitcoin::ScriptBuf,
        value: Amount,
    ) -> Result<(), CableError> {
        let paid =
            value_paid(tx, payout).map_err(|e| anyhow::anyhow!("built a wrong payment: {e}"))?;
        if paid != value {
            return Err(anyhow::anyhow!("built a payment of {paid} instead of {value}").into());
        }
        Ok(())
    }
    pub(super) fn record_of(
        payment_id: u64,
        amount: Amount,
        signed: &wallet::onchain::SignedPayment,
    ) -> SignedRecord {
        SignedRecord {
            payment_id,
            txid: signed.tx.compute_txid(),
            amount,
            fee: signed.fee,
            vsize: signed.tx.vsize() as u64,
            status: "signed".into(),
            psbt: signed.psbt.serialize(),
        }
    }
    /// Close an input set by broadcasting its highest accepted transaction ourselves (the
    /// socket should have; this pays nothing more than the socket accepted, and frees our
    /// change). When a higher payment of the set left the cable without an answer (the link
    /// dropped, or the session ended before the socket's reply), the socket may hold it and
    /// broadcast it: the cable then broadcasts nothing, as its lower transaction would
    /// conflict with the socket's (and, first in the mempool, make an honest cable look like
    /// a double spender).
    pub(super) fn settle_set(
        &mut self,
        session: &mut Session,
        set: &CableSet,
    ) -> Result<(), CableError> {
        let payments = self
            .store
            .payments(&set.session_id)
            .context("reading the store")?;
        let of_set: Vec<_> = payments
            .iter()
            .filter_map(|p| {
                let tx = bitcoin::psbt::Psbt::deserialize(&p.psbt)
                    .ok()?
                    .extract_tx_unchecked_fee_rate();
                let mut inputs: Vec<_> = tx.input.iter().map(|i| i.previous_output).collect();
                inputs.sort();
                let value = value_paid(&tx, &set.payout_script).ok()?;
                (inputs == set.inputs).then_some((value, tx, p))
            })
            .collect();
        let highest = of_set
            .iter()
            .filter(|(_, _, p)| p.status == "accepted")
            .max_by_key(|(value, _, _)| *value)
            .map(|(value, tx, p)| (*value, tx.clone(), *p));
        let unanswered = of_set
            .iter()
            .filter(|(_, _, p)| p.status != "accepted")
            .map(|(value, _, _)| *value)
            .max();
        let highest = match (highest, unanswered) {
            (Some((accepted, ..)), Some(higher)) if higher > accepted => {
                tracing::info!(set = set.index, %higher, "a higher payment of the input set got no answer: the socket may hold it, left to the socket to broadcast");
                None
            }
            (highest, _) => highest,
        };
        if let Some((value, tx, record)) = highest {
            tokio::task::block_in_place(|| {
                self.chain.broadcast(&tx)?;
                self.wallet.record_sent(&tx)
            })
            .map_err(anyhow::Error::from)?;
            tracing::info!(set = set.index, txid = %record.txid, %value, "input set settled");
            session.onchain_txs.push(PaymentReport {
                payment_id: record.payment_id,
                txid: record.txid.to_string(),
                amount_sat: value.to_sat(),
                fee_sat: set.fee.to_sat(),
                vsize: record.vsize,
                latency_ms: None,
            });
        }
        self.store
            .close_set(&set.session_id, set.index)
            .context("closing the input set")?;
        Ok(())
    }
}
