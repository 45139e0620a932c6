//! Protocol rules of the `onchain` scheme (paper seed 000 §V, Table I; design.md "Payment
//! schemes"), one implementation called by both nodes so that cable and socket cannot disagree.
//!
//! - [`quota_amount`]: what one quota costs on chain.
//! - [`decode_payment`]: a `PayTransaction` PSBT (BIP 174) turned into the transaction it carries.
//! - [`check_onchain_payment`]: the transaction pays exactly the terms to the payout script.

use bitcoin::hex::DisplayHex;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, Network, ScriptBuf, Transaction};

use crate::units::{EnergyMwh, PriceMsatPerWh, UnitsError};
use crate::v1;

/// A message or transaction that breaks a protocol rule. The text says which rule, for logs,
/// error replies and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The peer is on another Bitcoin network.
    #[error("wrong network: expected {expected}, got {got}")]
    WrongNetwork {
        /// Our network.
        expected: String,
        /// What the peer said.
        got: String,
    },
    /// The terms pay another script than the offer's payout script.
    #[error("payout script {got} is not the offer's {expected}")]
    PayoutScript {
        /// The offer's script, hex.
        expected: String,
        /// The script in the terms, hex.
        got: String,
    },
    /// The amount is not price × quota.
    #[error("amount {got_msat} msat is not price x quota = {expected_msat} msat")]
    Amount {
        /// price × quota, rounded up to whole sat.
        expected_msat: u64,
        /// The amount asked for or paid.
        got_msat: u64,
    },
    /// The quota is not the offer's.
    #[error("quota {got_mwh} mWh is not the offer's {expected_mwh} mWh")]
    Quota {
        /// The offer's quota.
        expected_mwh: u64,
        /// The quota in the terms.
        got_mwh: u64,
    },
    /// A payment below the scheme's smallest payment (the dust limit for on-chain schemes).
    #[error("{amount} is below the smallest payment of {min}")]
    BelowMinimum {
        /// The amount.
        amount: Amount,
        /// The smallest accepted payment.
        min: Amount,
    },
    /// The scheme is not the one agreed.
    #[error("scheme {0} is not the one agreed")]
    Scheme(i32),
    /// The transaction does not pay the payout script exactly the amount, in one output.
    #[error("the transaction pays {paid} in {outputs} output(s) to the payout script, not exactly {expected} in one")]
    Payment {
        /// What the terms ask for.
        expected: Amount,
        /// What the transaction pays the payout script.
        paid: Amount,
        /// How many outputs pay the payout script.
        outputs: usize,
    },
    /// single-fee: the value is not exactly one increment above the last.
    #[error("value {got} is not {expected}, one increment above the last")]
    Value {
        /// One increment above the last value.
        expected: Amount,
        /// The value asked for or paid.
        got: Amount,
    },
    /// single-fee: the value passes the set's maximum.
    #[error("value {value} is above the maximum of {max}")]
    AboveMax {
        /// The value.
        value: Amount,
        /// The maximum of the input set.
        max: Amount,
    },
    /// single-fee: the inputs are not the set's.
    #[error("inputs: {0}")]
    Inputs(String),
    /// single-fee: the fee changed (the outputs of a set always sum to the same).
    #[error("the fee changed: outputs sum to {got}, the set's sum to {expected}")]
    Fee {
        /// What the set's transactions pay out (or its fee, for terms).
        expected: Amount,
        /// What this one pays out (or asks as fee).
        got: Amount,
    },
    /// An offer or a reply breaks a rule of its shape in socket.proto (a scheme without its
    /// terms, a key that does not parse, a zero quota, ...).
    #[error("malformed {message}: {reason}")]
    Malformed {
        /// Which message: "offer", "terms".
        message: &'static str,
        /// The rule broken.
        reason: String,
    },
    /// The offer does not offer this scheme.
    #[error("scheme {0} is not offered")]
    NotOffered(String),
    /// The PSBT bytes do not decode, or the PSBT is not finalized.
    #[error("bad PSBT: {0}")]
    Psbt(String),
    /// Unit arithmetic overflowed.
    #[error(transparent)]
    Units(#[from] UnitsError),
}

/// The `t2t.v1.Network` of a Bitcoin network.
pub fn network_to_proto(network: Network) -> v1::Network {
    match network {
        Network::Bitcoin => v1::Network::Bitcoin,
        Network::Testnet | Network::Testnet4 => v1::Network::Testnet,
        Network::Signet => v1::Network::Signet,
        Network::Regtest => v1::Network::Regtest,
    }
}

/// Check that a peer's `network` field is `expected`.
pub fn check_network(expected: Network, got: i32) -> Result<(), RuleError> {
    let want = network_to_proto(expected);
    if got == want as i32 {
        return Ok(());
    }
    let got = v1::Network::try_from(got)
        .map(|n| n.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("unknown network {got}"));
    Err(RuleError::WrongNetwork {
        expected: want.as_str_name().to_owned(),
        got,
    })
}

/// What one quota of `quota` costs on chain at `price`: price × quota in msat rounded up, then
/// up to whole sat (design.md, "Units and names").
pub fn quota_amount(price: PriceMsatPerWh, quota: EnergyMwh) -> Result<Amount, RuleError> {
    Ok(price.cost_of(quota)?.to_amount_ceil())
}

/// The terms of one `onchain` payment, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnchainTerms {
    /// The scriptPubKey to pay.
    pub payout_script: ScriptBuf,
    /// The exact amount.
    pub amount: Amount,
    /// Energy the payment buys.
    pub quota: EnergyMwh,
}

/// Decode the PSBT of a `PayTransaction` and take out its transaction. Every input must be
/// finalized (BIP 174 "Input Finalizer"); the fee is not checked here, as the PSBT's own input
/// values are the payer's word: the socket checks fees against the chain.
pub fn decode_payment(psbt: &[u8]) -> Result<Transaction, RuleError> {
    let psbt = Psbt::deserialize(psbt).map_err(|e| RuleError::Psbt(e.to_string()))?;
    if let Some(index) = psbt
        .inputs
        .iter()
        .position(|i| i.final_script_sig.is_none() && i.final_script_witness.is_none())
    {
        return Err(RuleError::Psbt(format!("input {index} is not finalized")));
    }
    if psbt.inputs.is_empty() {
        return Err(RuleError::Psbt("no inputs".into()));
    }
    Ok(psbt.extract_tx_unchecked_fee_rate())
}

/// Check that `tx` pays `terms.payout_script` exactly `terms.amount`, in exactly one output.
pub fn check_onchain_payment(tx: &Transaction, terms: &OnchainTerms) -> Result<(), RuleError> {
    let to_payee: Vec<Amount> = tx
        .output
        .iter()
        .filter(|o| o.script_pubkey == terms.payout_script)
        .map(|o| o.value)
        .collect();
    let paid = to_payee.iter().copied().sum::<Amount>();
    if to_payee.len() != 1 || paid != terms.amount {
        return Err(RuleError::Payment {
            expected: terms.amount,
            paid,
            outputs: to_payee.len(),
        });
    }
    Ok(())
}

pub(crate) fn hex_of(bytes: &[u8]) -> String {
    bytes.to_lower_hex_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::terms::check_terms;
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;
    use bitcoin::TxOut;
    use proptest::prelude::*;

    fn offer() -> v1::Offer {
        v1::Offer {
            network: v1::Network::Regtest as i32,
            price_msat_per_wh: 125_000,
            quota_mwh: 8_000,
            payout_script: vec![
                0x00, 0x14, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
            ],
            schemes: vec![v1::SchemeTerms {
                scheme: v1::Scheme::Onchain as i32,
                min_payment_sat: 546,
                min_fee_rate_sat_per_vb: 0,
                terms: Some(v1::scheme_terms::Terms::Onchain(v1::OnchainOfferTerms {})),
            }],
            ..Default::default()
        }
    }

    fn terms_for(offer: &v1::Offer) -> v1::PowerRequestResponse {
        v1::PowerRequestResponse {
            session_id: "s".into(),
            payment_id: 1,
            scheme: v1::Scheme::Onchain as i32,
            amount_msat: 1_000_000,
            quota_mwh: offer.quota_mwh,
            payout_script: offer.payout_script.clone(),
            terms: Some(v1::power_request_response::Terms::Onchain(
                v1::OnchainPaymentTerms {},
            )),
        }
    }

    fn tx_paying(outputs: &[(ScriptBuf, u64)]) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![],
            output: outputs
                .iter()
                .map(|(s, v)| TxOut {
                    script_pubkey: s.clone(),
                    value: Amount::from_sat(*v),
                })
                .collect(),
        }
    }

    #[test]
    fn honest_terms_pass() {
        let offer = offer();
        let terms = check_terms(&offer, &terms_for(&offer)).unwrap();
        assert_eq!(terms.amount, Amount::from_sat(1_000));
        assert_eq!(terms.quota, EnergyMwh(8_000));
    }

    #[test]
    fn cheating_terms_are_refused() {
        let offer = offer();
        let mut t = terms_for(&offer);
        t.payout_script = vec![0x51];
        assert!(matches!(
            check_terms(&offer, &t),
            Err(RuleError::PayoutScript { .. })
        ));
        let mut t = terms_for(&offer);
        t.amount_msat += 1_000;
        assert!(matches!(
            check_terms(&offer, &t),
            Err(RuleError::Amount { .. })
        ));
        let mut t = terms_for(&offer);
        t.quota_mwh -= 1;
        assert!(matches!(
            check_terms(&offer, &t),
            Err(RuleError::Quota { .. })
        ));
        let mut t = terms_for(&offer);
        t.scheme = v1::Scheme::SingleFee as i32;
        assert!(matches!(check_terms(&offer, &t), Err(RuleError::Scheme(_))));
        let mut cheap = offer.clone();
        cheap.price_msat_per_wh = 1;
        let mut t = terms_for(&cheap);
        t.amount_msat = 1_000; // 8 Wh × 1 msat/Wh = 8 msat, rounded up to 1 sat
        assert!(matches!(
            check_terms(&cheap, &t),
            Err(RuleError::BelowMinimum { .. })
        ));
    }

    #[test]
    fn network_must_match() {
        assert!(check_network(Network::Regtest, v1::Network::Regtest as i32).is_ok());
        let err = check_network(Network::Regtest, v1::Network::Bitcoin as i32).unwrap_err();
        assert!(err.to_string().contains("NETWORK_BITCOIN"), "{err}");
        assert!(check_network(Network::Regtest, 99).is_err());
    }

    #[test]
    fn payment_must_be_exact_and_single() {
        let payee = ScriptBuf::from_bytes(offer().payout_script);
        let other = ScriptBuf::from_bytes(vec![0x51]);
        let terms = OnchainTerms {
            payout_script: payee.clone(),
            amount: Amount::from_sat(1_000),
            quota: EnergyMwh(8_000),
        };
        assert!(check_onchain_payment(
            &tx_paying(&[(payee.clone(), 1_000), (other.clone(), 5)]),
            &terms
        )
        .is_ok());
        for bad in [
            tx_paying(&[(payee.clone(), 999)]),
            tx_paying(&[(other.clone(), 1_000)]),
            tx_paying(&[(payee.clone(), 500), (payee.clone(), 500)]),
            tx_paying(&[(payee.clone(), 1_001)]),
        ] {
            assert!(matches!(
                check_onchain_payment(&bad, &terms),
                Err(RuleError::Payment { .. })
            ));
        }
    }

    #[test]
    fn garbage_psbt_is_refused() {
        assert!(matches!(
            decode_payment(b"not a psbt"),
            Err(RuleError::Psbt(_))
        ));
        assert!(matches!(decode_payment(&[]), Err(RuleError::Psbt(_))));
    }

    proptest! {
        #[test]
        fn amount_checks_agree_with_units(price in 1u64..10_000_000, quota in 1u64..100_000_000) {
            let amount = quota_amount(PriceMsatPerWh(price), EnergyMwh(quota)).unwrap();
            let msat = PriceMsatPerWh(price).cost_of(EnergyMwh(quota)).unwrap().0;
            prop_assert!(amount.to_sat() * 1_000 >= msat);
            prop_assert!(amount.to_sat() * 1_000 < msat + 1_000);
        }
    }
}
