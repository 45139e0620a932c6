//! The `single-fee` scheme (paper seed 000 §VI, Table II, Fig. 4; design.md "Payment schemes").
//!
//! The cable signs progressively higher-valued transactions over the **same inputs**; the socket
//! keeps the latest and broadcasts only one, so a whole input set pays one fee. An input set is
//! fixed by its first transaction: its inputs, and the sum of its outputs (with the inputs fixed,
//! an unchanged output sum is an unchanged fee). Every later transaction pays the socket exactly
//! one increment more, never more than the set's maximum.
//!
//! - [`SellerSet`]: what the socket holds of one input set, and its checks of each payment.
//! - [`BuyerSet`]: what the cable signed of one input set, and its checks of each request.
//!
//! Both are pure: no chain, no store. Whether inputs are unspent and whether bitcoind accepts a
//! transaction is checked by the socket against the chain.

use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, Txid};

use crate::rules::RuleError;
use crate::v1;

/// The fixed terms of an input set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetTerms {
    /// The socket's payout script.
    pub payout_script: ScriptBuf,
    /// What each payment adds: price × quota.
    pub increment: Amount,
    /// The most the set may pay the socket.
    pub max: Amount,
}

/// What `tx` pays `payout_script`, which it must do in exactly one output.
pub fn value_paid(tx: &Transaction, payout_script: &ScriptBuf) -> Result<Amount, RuleError> {
    let paying: Vec<Amount> = tx
        .output
        .iter()
        .filter(|o| &o.script_pubkey == payout_script)
        .map(|o| o.value)
        .collect();
    match paying.as_slice() {
        [value] => Ok(*value),
        _ => Err(RuleError::Payment {
            expected: Amount::ZERO,
            paid: paying.iter().copied().sum(),
            outputs: paying.len(),
        }),
    }
}

fn sorted_inputs(tx: &Transaction) -> Vec<OutPoint> {
    let mut inputs: Vec<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
    inputs.sort();
    inputs
}

fn output_sum(tx: &Transaction) -> Amount {
    tx.output.iter().map(|o| o.value).sum()
}

/// The socket's view of one input set: the latest transaction it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SellerSet {
    terms: SetTerms,
    latest: Option<(Transaction, Amount)>,
}

impl SellerSet {
    /// A set with nothing paid yet.
    pub fn new(terms: SetTerms) -> Self {
        SellerSet {
            terms,
            latest: None,
        }
    }

    /// A set holding `tx`, reloaded after a restart. Errors when `tx` does not pay the payout
    /// script in one output.
    pub fn resume(terms: SetTerms, tx: Transaction) -> Result<Self, RuleError> {
        let value = value_paid(&tx, &terms.payout_script)?;
        Ok(SellerSet {
            terms,
            latest: Some((tx, value)),
        })
    }

    /// The set's terms.
    pub fn terms(&self) -> &SetTerms {
        &self.terms
    }

    /// Value of the transaction held (zero before the first).
    pub fn value(&self) -> Amount {
        self.latest.as_ref().map_or(Amount::ZERO, |(_, v)| *v)
    }

    /// The transaction held.
    pub fn latest(&self) -> Option<&Transaction> {
        self.latest.as_ref().map(|(tx, _)| tx)
    }

    /// The inputs of the set, once fixed by its first transaction (sorted).
    pub fn inputs(&self) -> Vec<OutPoint> {
        self.latest().map(sorted_inputs).unwrap_or_default()
    }

    /// The value the next payment must pay.
    pub fn next_value(&self) -> Amount {
        self.value() + self.terms.increment
    }

    /// Whether one more increment would pass the maximum: the set is done.
    pub fn is_full(&self) -> bool {
        self.next_value() > self.terms.max
    }

    /// Check a payment and hold it: pays the payout script exactly [`SellerSet::next_value`] in
    /// one output, at most the maximum; after the first, spends exactly the set's inputs with
    /// the same output sum (so the same fee). Returns the new value.
    pub fn accept(&mut self, tx: Transaction) -> Result<Amount, RuleError> {
        let value = value_paid(&tx, &self.terms.payout_script)?;
        let expected = self.next_value();
        if value != expected {
            return Err(RuleError::Value {
                expected,
                got: value,
            });
        }
        if value > self.terms.max {
            return Err(RuleError::AboveMax {
                value,
                max: self.terms.max,
            });
        }
        if tx.input.is_empty() {
            return Err(RuleError::Inputs("the transaction spends nothing".into()));
        }
        if let Some((previous, _)) = &self.latest {
            if sorted_inputs(&tx) != sorted_inputs(previous) {
                return Err(RuleError::Inputs(
                    "the transaction does not spend exactly the inputs of the set".into(),
                ));
            }
            let (expected_sum, got_sum) = (output_sum(previous), output_sum(&tx));
            if got_sum != expected_sum {
                return Err(RuleError::Fee {
                    expected: expected_sum,
                    got: got_sum,
                });
            }
        }
        self.latest = Some((tx, value));
        Ok(value)
    }
}

/// The cable's view of one input set: its inputs, fee and the highest value it signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuyerSet {
    /// The set's terms as fixed by the first request.
    pub terms: SetTerms,
    /// The inputs every transaction of the set spends (sorted).
    pub inputs: Vec<OutPoint>,
    /// The fee every transaction of the set pays.
    pub fee: Amount,
    /// The highest value signed so far.
    pub highest: Amount,
}

fn outpoints_of(inputs: &[v1::Outpoint]) -> Result<Vec<OutPoint>, RuleError> {
    let mut outpoints = inputs
        .iter()
        .map(|o| {
            let txid: [u8; 32] = o
                .txid
                .as_slice()
                .try_into()
                .map_err(|_| RuleError::Inputs("an outpoint's txid is not 32 bytes".into()))?;
            Ok(OutPoint {
                txid: Txid::from_byte_array(txid),
                vout: o.vout,
            })
        })
        .collect::<Result<Vec<_>, RuleError>>()?;
    outpoints.sort();
    Ok(outpoints)
}

/// Outpoints as sent on the wire.
pub fn outpoints_to_proto(outpoints: &[OutPoint]) -> Vec<v1::Outpoint> {
    outpoints
        .iter()
        .map(|o| v1::Outpoint {
            txid: o.txid.to_byte_array().to_vec(),
            vout: o.vout,
        })
        .collect()
}

use bitcoin::hashes::Hash;

impl BuyerSet {
    /// Check the terms of the next payment of this set before signing: the same payout script,
    /// increment and maximum, exactly one increment above the highest value signed (never lower,
    /// equal, or a bigger jump), at most the maximum, the set's inputs and fee. Returns the value
    /// to sign.
    pub fn check_next(&self, reply: &v1::PowerRequestResponse) -> Result<Amount, RuleError> {
        let terms = crate::terms::single_fee_terms(reply)?;
        if reply.payout_script != self.terms.payout_script.as_bytes() {
            return Err(RuleError::PayoutScript {
                expected: self.terms.payout_script.to_hex_string(),
                got: ScriptBuf::from_bytes(reply.payout_script.clone()).to_hex_string(),
            });
        }
        let increment_msat = self.terms.increment.to_sat() * 1_000;
        if reply.amount_msat != increment_msat {
            return Err(RuleError::Amount {
                expected_msat: increment_msat,
                got_msat: reply.amount_msat,
            });
        }
        let value = Amount::from_sat(terms.value_sat);
        let expected = self.highest + self.terms.increment;
        if value != expected {
            return Err(RuleError::Value {
                expected,
                got: value,
            });
        }
        if value > self.terms.max || Amount::from_sat(terms.max_amount_sat) != self.terms.max {
            return Err(RuleError::AboveMax {
                value,
                max: self.terms.max,
            });
        }
        if outpoints_of(&terms.inputs)? != self.inputs {
            return Err(RuleError::Inputs(
                "the socket asks for other inputs than the set's".into(),
            ));
        }
        if Amount::from_sat(terms.fee_sat) != self.fee {
            return Err(RuleError::Fee {
                expected: self.fee,
                got: Amount::from_sat(terms.fee_sat),
            });
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;
    use bitcoin::{Sequence, TxIn, TxOut, Witness};
    use proptest::prelude::*;

    fn payout() -> ScriptBuf {
        ScriptBuf::from_bytes(vec![
            0x00, 0x14, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        ])
    }
    fn change() -> ScriptBuf {
        ScriptBuf::from_bytes(vec![
            0x00, 0x14, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
        ])
    }
    fn outpoint(n: u8) -> OutPoint {
        OutPoint {
            txid: Txid::from_byte_array([n; 32]),
            vout: 0,
        }
    }
    fn terms() -> SetTerms {
        SetTerms {
            payout_script: payout(),
            increment: Amount::from_sat(1_000),
            max: Amount::from_sat(5_000),
        }
    }
    /// A transaction over `inputs` paying `value` to the socket and `rest` to the cable.
    fn tx(inputs: &[u8], value: u64, rest: u64) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: inputs
                .iter()
                .map(|n| TxIn {
                    previous_output: outpoint(*n),
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output: vec![
                TxOut {
                    value: Amount::from_sat(value),
                    script_pubkey: payout(),
                },
                TxOut {
                    value: Amount::from_sat(rest),
                    script_pubkey: change(),
                },
            ],
        }
    }

    #[test]
    fn an_honest_set_rises_one_increment_at_a_time() {
        let mut set = SellerSet::new(terms());
        for k in 1..=5u64 {
            let value = set
                .accept(tx(&[1, 2], k * 1_000, 9_000 - k * 1_000))
                .unwrap();
            assert_eq!(value, Amount::from_sat(k * 1_000));
        }
        assert!(set.is_full());
        assert_eq!(set.inputs(), vec![outpoint(1), outpoint(2)]);
    }

    #[test]
    fn cheating_payments_are_refused_and_change_nothing() {
        let mut set = SellerSet::new(terms());
        set.accept(tx(&[1, 2], 1_000, 8_000)).unwrap();
        let held = set.clone();
        for (bad, what) in [
            (tx(&[1, 3], 2_000, 7_000), "other inputs"),
            (tx(&[1, 2], 1_000, 8_000), "same value again"),
            (tx(&[1, 2], 500, 8_500), "lower value"),
            (tx(&[1, 2], 3_000, 6_000), "a jump of two"),
            (tx(&[1, 2], 2_000, 6_900), "changed fee"),
            (tx(&[1], 2_000, 7_000), "fewer inputs"),
        ] {
            assert!(set.accept(bad).is_err(), "{what}");
            assert_eq!(set, held, "{what} changed the set");
        }
        let mut elsewhere = tx(&[1, 2], 2_000, 7_000);
        elsewhere.output[0].script_pubkey = change();
        assert!(set.accept(elsewhere).is_err(), "payout elsewhere");
    }

    #[test]
    fn the_buyer_refuses_cheating_requests() {
        let buyer = BuyerSet {
            terms: terms(),
            inputs: vec![outpoint(1), outpoint(2)],
            fee: Amount::from_sat(300),
            highest: Amount::from_sat(2_000),
        };
        let honest_terms = v1::SingleFeePaymentTerms {
            value_sat: 3_000,
            max_amount_sat: 5_000,
            inputs: outpoints_to_proto(&[outpoint(2), outpoint(1)]),
            fee_sat: 300,
        };
        let reply = |terms: v1::SingleFeePaymentTerms| v1::PowerRequestResponse {
            scheme: v1::Scheme::SingleFee as i32,
            amount_msat: 1_000_000,
            payout_script: payout().to_bytes(),
            terms: Some(v1::power_request_response::Terms::SingleFee(terms)),
            ..Default::default()
        };
        let honest = reply(honest_terms.clone());
        let with = |change: fn(&mut v1::SingleFeePaymentTerms)| {
            let mut terms = honest_terms.clone();
            change(&mut terms);
            reply(terms)
        };
        assert_eq!(buyer.check_next(&honest), Ok(Amount::from_sat(3_000)));
        assert!(matches!(
            buyer.check_next(&with(|t| t.value_sat = 4_000)),
            Err(RuleError::Value { .. })
        ));
        assert!(matches!(
            buyer.check_next(&with(|t| t.value_sat = 2_000)),
            Err(RuleError::Value { .. })
        ));
        assert!(matches!(
            buyer.check_next(&with(
                |t| t.inputs = outpoints_to_proto(&[outpoint(1), outpoint(3)])
            )),
            Err(RuleError::Inputs(_))
        ));
        assert!(matches!(
            buyer.check_next(&with(|t| t.fee_sat = 400)),
            Err(RuleError::Fee { .. })
        ));
        assert!(matches!(
            buyer.check_next(&with(|t| t.max_amount_sat = 9_000)),
            Err(RuleError::AboveMax { .. })
        ));
        // Terms of another scheme, or none, are refused before anything else.
        let mut bare = honest.clone();
        bare.terms = None;
        assert!(matches!(
            buyer.check_next(&bare),
            Err(RuleError::Malformed { .. })
        ));
        let mut payout_elsewhere = honest.clone();
        payout_elsewhere.payout_script = change().to_bytes();
        assert!(matches!(
            buyer.check_next(&payout_elsewhere),
            Err(RuleError::PayoutScript { .. })
        ));
    }

    proptest! {
        /// Whatever a cable sends, the socket never credits more than the value of the
        /// transaction it holds, and never holds more than the maximum.
        #[test]
        fn credit_never_exceeds_the_held_value(
            messages in proptest::collection::vec((0u8..4, 0u8..4, 0u64..8, 0u64..10_000), 0..40)
        ) {
            let mut set = SellerSet::new(terms());
            let mut credited = Amount::ZERO;
            for (a, b, k, rest) in messages {
                let inputs: Vec<u8> = if a == b { vec![a] } else { vec![a, b] };
                if set.accept(tx(&inputs, k * 1_000, rest)).is_ok() {
                    credited += set.terms().increment;
                }
                prop_assert!(credited <= set.value());
                prop_assert!(set.value() <= set.terms().max);
                if let Some(held) = set.latest() {
                    prop_assert_eq!(value_paid(held, &payout()).unwrap(), set.value());
                }
            }
        }
    }
}
