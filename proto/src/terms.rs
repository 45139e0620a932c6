//! The shape of offers and of each scheme's terms (the `oneof terms` of `SchemeTerms` and
//! `PowerRequestResponse` in socket.proto), checked in one place for both nodes.
//!
//! - [`check_offer`]: every rule socket.proto states for a `GetOfferResponse`.
//! - [`offered`] and `offered_*`: one scheme's terms of an offer, the variant its scheme names.
//! - `*_terms`: one scheme's terms of a `PowerRequest` reply, the variant its scheme names.
//! - [`check_terms`] and [`check_quota`]: a reply's on-chain terms against the offer.

use bitcoin::{Amount, PublicKey, ScriptBuf};

use crate::rules::{hex_of, quota_amount, OnchainTerms, RuleError};
use crate::units::{AmountMsat, EnergyMwh, PriceMsatPerWh};
use crate::v1::{self, power_request_response, scheme_terms};
use crate::Scheme;

fn malformed(message: &'static str, reason: impl Into<String>) -> RuleError {
    RuleError::Malformed {
        message,
        reason: reason.into(),
    }
}

/// Whether `terms` is the variant of `scheme`.
fn offer_variant_is(scheme: Scheme, terms: &scheme_terms::Terms) -> bool {
    use scheme_terms::Terms;
    matches!(
        (scheme, terms),
        (Scheme::Onchain, Terms::Onchain(_))
            | (Scheme::SingleFee, Terms::SingleFee(_))
            | (Scheme::Spillman, Terms::Spillman(_))
            | (Scheme::Lightning, Terms::Lightning(_))
    )
}

/// Check an offer's shape (socket.proto, `GetOfferResponse` and `SchemeTerms`): a 33-byte
/// identity key, a quota above zero, each scheme known, offered once, with the terms of its
/// own variant; single-fee's maximum above zero; spillman's channel key a valid public key and
/// `min_lock_blocks <= max_lock_blocks`; lightning's node id a valid public key and its
/// address not empty; a standard payout script (P2WPKH, P2TR, P2WSH, P2PKH, P2SH) when an
/// on-chain scheme is offered; one quota at price × quota at least each scheme's
/// `min_payment_sat`. Errors: [`RuleError::Malformed`] naming the rule.
pub fn check_offer(offer: &v1::Offer) -> Result<(), RuleError> {
    let bad = |reason: String| malformed("offer", reason);
    PublicKey::from_slice(&offer.socket_identity_key)
        .map_err(|e| bad(format!("socket identity key: {e}")))?;
    if offer.quota_mwh == 0 {
        return Err(bad("the quota is zero".into()));
    }
    let amount = quota_amount(
        PriceMsatPerWh(offer.price_msat_per_wh),
        EnergyMwh(offer.quota_mwh),
    )?;
    let mut seen = Vec::new();
    for entry in &offer.schemes {
        let scheme = Scheme::from_proto(entry.scheme)
            .ok_or_else(|| bad(format!("unknown scheme {}", entry.scheme)))?;
        if seen.contains(&scheme) {
            return Err(bad(format!("{scheme} offered twice")));
        }
        seen.push(scheme);
        let terms = entry
            .terms
            .as_ref()
            .filter(|t| offer_variant_is(scheme, t))
            .ok_or_else(|| bad(format!("{scheme} without its terms")))?;
        match terms {
            scheme_terms::Terms::Onchain(_) => {}
            scheme_terms::Terms::SingleFee(t) => {
                if t.max_amount_sat == 0 {
                    return Err(bad("single-fee with a maximum of 0 sat".into()));
                }
            }
            scheme_terms::Terms::Spillman(t) => {
                PublicKey::from_slice(&t.socket_channel_key)
                    .map_err(|e| bad(format!("spillman channel key: {e}")))?;
                if t.min_lock_blocks > t.max_lock_blocks {
                    return Err(bad(format!(
                        "spillman lock blocks {}..={} is empty",
                        t.min_lock_blocks, t.max_lock_blocks
                    )));
                }
            }
            scheme_terms::Terms::Lightning(t) => {
                bitcoin::secp256k1::PublicKey::from_slice(&t.node_id)
                    .map_err(|e| bad(format!("lightning node id: {e}")))?;
                if t.address.is_empty() {
                    return Err(bad("lightning without an address".into()));
                }
            }
        }
        let min = Amount::from_sat(entry.min_payment_sat);
        if amount < min {
            return Err(RuleError::BelowMinimum { amount, min });
        }
    }
    if seen.iter().any(|s| *s != Scheme::Lightning) && !is_standard(&offer.payout_script) {
        return Err(bad(
            "the payout script is not a standard output script".into()
        ));
    }
    Ok(())
}

/// Whether `script` is a standard output script a payment may pay: P2WPKH, P2TR, P2WSH,
/// P2PKH or P2SH.
pub fn is_standard(script: &[u8]) -> bool {
    let script = ScriptBuf::from_bytes(script.to_vec());
    script.is_p2wpkh()
        || script.is_p2tr()
        || script.is_p2wsh()
        || script.is_p2pkh()
        || script.is_p2sh()
}

/// The offer's entry for `scheme`. Errors: [`RuleError::NotOffered`], or
/// [`RuleError::Malformed`] when its terms are not of its variant.
pub fn offered(offer: &v1::Offer, scheme: Scheme) -> Result<&v1::SchemeTerms, RuleError> {
    let entry = offer
        .schemes
        .iter()
        .find(|s| s.scheme == scheme.to_proto() as i32)
        .ok_or_else(|| RuleError::NotOffered(scheme.to_string()))?;
    match &entry.terms {
        Some(terms) if offer_variant_is(scheme, terms) => Ok(entry),
        _ => Err(malformed("offer", format!("{scheme} without its terms"))),
    }
}

/// The offer's single-fee terms (see [`offered`] for the errors).
pub fn offered_single_fee(offer: &v1::Offer) -> Result<&v1::SingleFeeOfferTerms, RuleError> {
    match &offered(offer, Scheme::SingleFee)?.terms {
        Some(scheme_terms::Terms::SingleFee(t)) => Ok(t),
        _ => unreachable!("checked by offered"),
    }
}

/// The offer's spillman terms (see [`offered`] for the errors).
pub fn offered_spillman(offer: &v1::Offer) -> Result<&v1::SpillmanOfferTerms, RuleError> {
    match &offered(offer, Scheme::Spillman)?.terms {
        Some(scheme_terms::Terms::Spillman(t)) => Ok(t),
        _ => unreachable!("checked by offered"),
    }
}

/// The offer's lightning terms (see [`offered`] for the errors).
pub fn offered_lightning(offer: &v1::Offer) -> Result<&v1::LightningOfferTerms, RuleError> {
    match &offered(offer, Scheme::Lightning)?.terms {
        Some(scheme_terms::Terms::Lightning(t)) => Ok(t),
        _ => unreachable!("checked by offered"),
    }
}

/// The scheme a reply names and its terms. Errors: [`RuleError::Scheme`] when the reply's
/// scheme is not `scheme`, [`RuleError::Malformed`] when its terms are not of its variant.
fn reply_terms(
    reply: &v1::PowerRequestResponse,
    scheme: Scheme,
) -> Result<&power_request_response::Terms, RuleError> {
    if reply.scheme != scheme.to_proto() as i32 {
        return Err(RuleError::Scheme(reply.scheme));
    }
    reply
        .terms
        .as_ref()
        .ok_or_else(|| malformed("terms", format!("{scheme} reply without its terms")))
}

/// The reply's onchain terms: the reply is of scheme `onchain` with its (empty) terms.
pub fn onchain_terms(
    reply: &v1::PowerRequestResponse,
) -> Result<&v1::OnchainPaymentTerms, RuleError> {
    match reply_terms(reply, Scheme::Onchain)? {
        power_request_response::Terms::Onchain(t) => Ok(t),
        _ => Err(malformed(
            "terms",
            "onchain reply with another scheme's terms",
        )),
    }
}

/// The reply's single-fee terms.
pub fn single_fee_terms(
    reply: &v1::PowerRequestResponse,
) -> Result<&v1::SingleFeePaymentTerms, RuleError> {
    match reply_terms(reply, Scheme::SingleFee)? {
        power_request_response::Terms::SingleFee(t) => Ok(t),
        _ => Err(malformed(
            "terms",
            "single-fee reply with another scheme's terms",
        )),
    }
}

/// The reply's spillman terms.
pub fn spillman_terms(
    reply: &v1::PowerRequestResponse,
) -> Result<&v1::SpillmanPaymentTerms, RuleError> {
    match reply_terms(reply, Scheme::Spillman)? {
        power_request_response::Terms::Spillman(t) => Ok(t),
        _ => Err(malformed(
            "terms",
            "spillman reply with another scheme's terms",
        )),
    }
}

/// The reply's lightning terms.
pub fn lightning_terms(
    reply: &v1::PowerRequestResponse,
) -> Result<&v1::LightningPaymentTerms, RuleError> {
    match reply_terms(reply, Scheme::Lightning)? {
        power_request_response::Terms::Lightning(t) => Ok(t),
        _ => Err(malformed(
            "terms",
            "lightning reply with another scheme's terms",
        )),
    }
}

/// The cable's check of a `PowerRequest` reply against the offer it accepted: scheme `onchain`
/// with its terms, then [`check_quota`]. Returns the terms to pay.
pub fn check_terms(
    offer: &v1::Offer,
    terms: &v1::PowerRequestResponse,
) -> Result<OnchainTerms, RuleError> {
    onchain_terms(terms)?;
    check_quota(offer, terms, Scheme::Onchain)
}

/// The part of a reply every on-chain scheme shares, checked against the offer: the offer's
/// payout script and quota, amount = price × quota ([`quota_amount`]), at least the smallest
/// payment of `scheme` in the offer. Returns the script, amount (per quota) and quota.
pub fn check_quota(
    offer: &v1::Offer,
    terms: &v1::PowerRequestResponse,
    scheme: Scheme,
) -> Result<OnchainTerms, RuleError> {
    if terms.payout_script != offer.payout_script {
        return Err(RuleError::PayoutScript {
            expected: hex_of(&offer.payout_script),
            got: hex_of(&terms.payout_script),
        });
    }
    if terms.quota_mwh != offer.quota_mwh {
        return Err(RuleError::Quota {
            expected_mwh: offer.quota_mwh,
            got_mwh: terms.quota_mwh,
        });
    }
    let quota = EnergyMwh(offer.quota_mwh);
    let amount = quota_amount(PriceMsatPerWh(offer.price_msat_per_wh), quota)?;
    let expected_msat = AmountMsat::try_from(amount)?.0;
    if terms.amount_msat != expected_msat {
        return Err(RuleError::Amount {
            expected_msat,
            got_msat: terms.amount_msat,
        });
    }
    let min = Amount::from_sat(offered(offer, scheme)?.min_payment_sat);
    if amount < min {
        return Err(RuleError::BelowMinimum { amount, min });
    }
    Ok(OnchainTerms {
        payout_script: ScriptBuf::from_bytes(terms.payout_script.clone()),
        amount,
        quota,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    fn key(byte: u8) -> Vec<u8> {
        SecretKey::from_slice(&[byte; 32])
            .unwrap()
            .public_key(&Secp256k1::signing_only())
            .serialize()
            .to_vec()
    }

    fn entry(scheme: v1::Scheme, terms: scheme_terms::Terms) -> v1::SchemeTerms {
        v1::SchemeTerms {
            scheme: scheme as i32,
            min_payment_sat: 546,
            min_fee_rate_sat_per_vb: 0,
            terms: Some(terms),
        }
    }

    /// An offer of all four schemes, well formed.
    fn offer() -> v1::Offer {
        v1::Offer {
            socket_identity_key: key(1),
            outlet_id: "outlet-1".into(),
            network: v1::Network::Regtest as i32,
            price_msat_per_wh: 125_000,
            quota_mwh: 8_000,
            schemes: vec![
                entry(
                    v1::Scheme::Onchain,
                    scheme_terms::Terms::Onchain(v1::OnchainOfferTerms {}),
                ),
                entry(
                    v1::Scheme::SingleFee,
                    scheme_terms::Terms::SingleFee(v1::SingleFeeOfferTerms {
                        max_amount_sat: 10_000,
                    }),
                ),
                entry(
                    v1::Scheme::Spillman,
                    scheme_terms::Terms::Spillman(v1::SpillmanOfferTerms {
                        socket_channel_key: key(2),
                        min_deposit_sat: 2_000,
                        min_lock_blocks: 12,
                        max_lock_blocks: 1_008,
                        close_margin_blocks: 6,
                    }),
                ),
                entry(
                    v1::Scheme::Lightning,
                    scheme_terms::Terms::Lightning(v1::LightningOfferTerms {
                        node_id: key(3),
                        address: "127.0.0.1:9735".into(),
                        keysend: true,
                    }),
                ),
            ],
            cable_nonce: vec![5; 32],
            payout_script: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([7; 20]))
                .to_bytes(),
        }
    }

    use bitcoin::hashes::Hash;

    fn refused(change: impl FnOnce(&mut v1::Offer)) -> String {
        let mut o = offer();
        change(&mut o);
        check_offer(&o).unwrap_err().to_string()
    }

    #[test]
    fn a_well_formed_offer_passes_and_gives_each_schemes_terms() {
        let o = offer();
        check_offer(&o).unwrap();
        assert_eq!(offered_single_fee(&o).unwrap().max_amount_sat, 10_000);
        assert_eq!(offered_spillman(&o).unwrap().min_deposit_sat, 2_000);
        assert!(offered_lightning(&o).unwrap().keysend);
        assert_eq!(offered(&o, Scheme::Onchain).unwrap().min_payment_sat, 546);
    }

    #[test]
    fn a_malformed_offer_is_refused_with_the_rule_it_breaks() {
        assert!(refused(|o| o.quota_mwh = 0).contains("quota is zero"));
        assert!(refused(|o| o.socket_identity_key = vec![2; 5]).contains("identity key"));
        assert!(refused(|o| o.schemes[1].terms = None).contains("single-fee without its terms"));
        assert!(refused(|o| o.schemes[0].terms = o.schemes[1].terms.clone())
            .contains("onchain without its terms"));
        assert!(refused(|o| o.schemes.push(o.schemes[0].clone())).contains("offered twice"));
        assert!(refused(|o| o.schemes[0].scheme = 99).contains("unknown scheme 99"));
        assert!(refused(|o| o.payout_script = vec![0x6a]).contains("not a standard"));
        assert!(refused(|o| o.schemes[0].min_payment_sat = 5_000).contains("below the smallest"));
        assert!(refused(|o| {
            if let Some(scheme_terms::Terms::Spillman(t)) = &mut o.schemes[2].terms {
                t.min_lock_blocks = 2_000;
            }
        })
        .contains("lock blocks"));
        assert!(refused(|o| {
            if let Some(scheme_terms::Terms::Lightning(t)) = &mut o.schemes[3].terms {
                t.node_id = vec![9; 33];
            }
        })
        .contains("node id"));
        // Lightning alone needs no payout script.
        let mut ln_only = offer();
        ln_only.schemes.drain(..3);
        ln_only.payout_script.clear();
        check_offer(&ln_only).unwrap();
        assert!(matches!(
            offered(&ln_only, Scheme::Onchain),
            Err(RuleError::NotOffered(_))
        ));
    }

    #[test]
    fn a_reply_must_carry_the_terms_of_its_scheme() {
        let reply = v1::PowerRequestResponse {
            scheme: v1::Scheme::Spillman as i32,
            terms: Some(power_request_response::Terms::Spillman(
                v1::SpillmanPaymentTerms { value_sat: 1_000 },
            )),
            ..Default::default()
        };
        assert_eq!(spillman_terms(&reply).unwrap().value_sat, 1_000);
        assert!(matches!(
            single_fee_terms(&reply),
            Err(RuleError::Scheme(3))
        ));
        let mut lying = reply.clone();
        lying.terms = Some(power_request_response::Terms::Lightning(
            v1::LightningPaymentTerms::default(),
        ));
        assert!(matches!(
            spillman_terms(&lying),
            Err(RuleError::Malformed { .. })
        ));
    }
}
