//! The cable's spending policy: what it accepts to pay, checked against every offer and every
//! payment before anything is signed (paper seed 000 §VII.B; design.md "Trust").

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, Network};
use proto::rules::{check_network, quota_amount};
use proto::units::{EnergyMwh, PriceMsatPerWh};
use proto::v1;
use proto::Scheme;
use proto::{identity, terms};
use serde::Deserialize;

/// Limits of what the cable pays.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Highest price accepted.
    pub max_price_msat_per_wh: u64,
    /// Most the cable pays in one session, fees not included.
    pub max_session_sat: u64,
    /// Schemes the cable may use, by preference: `single-fee`, `onchain`, `spillman`,
    /// `lightning` ([`Scheme`]).
    #[serde(default = "default_schemes")]
    pub schemes: Vec<Scheme>,
    /// single-fee: the most one input set may pay (the socket's maximum when that is lower).
    #[serde(default = "default_single_fee_max")]
    pub single_fee_max_sat: u64,
    /// Fee rate of on-chain payments.
    #[serde(default = "default_fee_rate")]
    pub fee_rate_sat_per_vb: u64,
    /// Highest fee of one on-chain payment.
    #[serde(default = "default_max_fee")]
    pub max_fee_sat: u64,
    /// spillman: the refund unlocks this many blocks after the channel opens (seed 003: how
    /// long the deposit may be held if the socket vanishes).
    #[serde(default = "default_lock_blocks")]
    pub spillman_lock_blocks: u32,
    /// Socket identity keys (33-byte compressed, hex) this cable pays; with
    /// `trusted_operator_keys`, a socket must be pinned here or certified by one of those.
    /// Both empty: any socket whose offer is signed by the identity key it names (the offer
    /// cannot be changed on the way, but a stranger's socket is paid too).
    #[serde(default, deserialize_with = "keys_from_hex")]
    pub trusted_socket_keys: Vec<PublicKey>,
    /// Operator keys (33-byte compressed, hex) whose certificates of a socket this cable
    /// accepts (socket.proto `SocketCertificate`).
    #[serde(default, deserialize_with = "keys_from_hex")]
    pub trusted_operator_keys: Vec<PublicKey>,
    /// How far the socket's count may run ahead of the cable's own meter (socket.proto
    /// `MeteringReceipt`, "Meter agreement"; seed 000 §VII.B) before the cable stops paying it
    /// and flags it: percent of the cable's energy since the baseline (default 5) ...
    #[serde(default = "default_meter_tolerance_percent")]
    pub meter_tolerance_percent: u64,
    /// ... plus this much (default 300 mWh).
    #[serde(default = "default_meter_tolerance_mwh")]
    pub meter_tolerance_mwh: u64,
}

fn default_meter_tolerance_percent() -> u64 {
    proto::receipt::MeterTolerance::default().percent
}
fn default_meter_tolerance_mwh() -> u64 {
    proto::receipt::MeterTolerance::default().mwh
}

fn keys_from_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PublicKey>, D::Error> {
    let hex: Vec<String> = Deserialize::deserialize(d)?;
    hex.iter()
        .map(|h| {
            h.parse::<PublicKey>()
                .map_err(|e| serde::de::Error::custom(format!("key {h:?}: {e}")))
        })
        .collect()
}

fn default_lock_blocks() -> u32 {
    144
}

fn default_schemes() -> Vec<Scheme> {
    vec![Scheme::SingleFee, Scheme::Onchain]
}
fn default_single_fee_max() -> u64 {
    10_000
}
fn default_fee_rate() -> u64 {
    2
}
fn default_max_fee() -> u64 {
    2_000
}

/// An offer the policy accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedOffer {
    /// The offer as received.
    pub offer: v1::Offer,
    /// The socket: its identity key (`offer.socket_identity_key`, what signs its status
    /// reports) and network, to which the cable addresses its signed requests.
    pub socket: proto::request_auth::Recipient,
    /// What one quota costs on chain.
    pub quota_amount: Amount,
    /// Energy of one quota.
    pub quota: EnergyMwh,
    /// The scheme chosen: the policy's first that the socket offers.
    pub scheme: v1::Scheme,
    /// single-fee: the maximum per input set the cable asks for.
    pub single_fee_max: Amount,
}

impl Policy {
    /// Check an offer: same network, well formed ([`proto::terms::check_offer`]), price at most
    /// the maximum, one of the policy's schemes offered (the first in the policy's order is
    /// chosen), its terms within the policy (spillman: the lock time and a deposit within the
    /// budget; single-fee: a set maximum that pays one quota), one quota within the session
    /// budget. The error says why not.
    pub fn check_offer(
        &self,
        offer: &v1::Offer,
        network: Network,
    ) -> Result<AcceptedOffer, String> {
        check_network(network, offer.network).map_err(|e| e.to_string())?;
        terms::check_offer(offer).map_err(|e| e.to_string())?;
        if offer.price_msat_per_wh > self.max_price_msat_per_wh {
            return Err(format!(
                "price {} msat/Wh is above the policy's maximum of {} msat/Wh",
                offer.price_msat_per_wh, self.max_price_msat_per_wh
            ));
        }
        let Some(scheme) = self
            .schemes
            .iter()
            .copied()
            .find(|scheme| terms::offered(offer, *scheme).is_ok())
        else {
            return Err(format!(
                "the socket offers none of the policy's schemes ({})",
                self.schemes
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if scheme == Scheme::Spillman {
            let terms = terms::offered_spillman(offer).map_err(|e| e.to_string())?;
            if !(terms.min_lock_blocks..=terms.max_lock_blocks).contains(&self.spillman_lock_blocks)
            {
                return Err(format!(
                    "the socket takes refunds locked {}..={} blocks, the policy locks {}",
                    terms.min_lock_blocks, terms.max_lock_blocks, self.spillman_lock_blocks
                ));
            }
            if self.max_session_sat < terms.min_deposit_sat {
                return Err(format!(
                    "the socket wants a deposit of at least {} sat, above the session budget of {} sat",
                    terms.min_deposit_sat, self.max_session_sat
                ));
            }
        }
        let quota = EnergyMwh(offer.quota_mwh);
        let amount = quota_amount(PriceMsatPerWh(offer.price_msat_per_wh), quota)
            .map_err(|e| e.to_string())?;
        if amount.to_sat() > self.max_session_sat {
            return Err(format!(
                "one quota costs {amount}, above the session budget of {} sat",
                self.max_session_sat
            ));
        }
        let single_fee_max = match scheme {
            Scheme::SingleFee => {
                let offered = terms::offered_single_fee(offer).map_err(|e| e.to_string())?;
                let max = Amount::from_sat(self.single_fee_max_sat.min(offered.max_amount_sat));
                if max < amount {
                    return Err(format!(
                        "a single-fee input set of at most {max} cannot pay one quota of {amount}"
                    ));
                }
                max
            }
            Scheme::Onchain | Scheme::Spillman | Scheme::Lightning => Amount::ZERO,
        };
        let socket = proto::request_auth::Recipient::of_offer(offer).map_err(|e| e.to_string())?;
        Ok(AcceptedOffer {
            socket,
            offer: offer.clone(),
            quota_amount: amount,
            quota,
            scheme: scheme.to_proto(),
            single_fee_max,
        })
    }

    /// Check a `GetOffer` reply to this cable's request for `outlet_id` with `nonce`: the
    /// socket's signature and that it answers this request ([`proto::identity::verify_offer`]),
    /// the socket's key trusted ([`Policy::trusts`]), then the offer itself
    /// ([`Policy::check_offer`]). The error says why not.
    pub fn check_signed_offer(
        &self,
        response: &v1::GetOfferResponse,
        outlet_id: &str,
        nonce: &[u8],
        network: Network,
    ) -> Result<AcceptedOffer, String> {
        let offer =
            identity::verify_offer(response, outlet_id, nonce).map_err(|e| e.to_string())?;
        let now_unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.trusts(&offer, &response.certificates, now_unix_secs)?;
        self.check_offer(&offer, network)
    }

    /// Whether the socket of `offer` is one to pay: any socket when the policy pins no key and
    /// trusts no operator; else a pinned key, or a valid certificate for the offer's outlet by
    /// a trusted operator, unexpired at `now_unix_secs`.
    pub fn trusts(
        &self,
        offer: &v1::Offer,
        certificates: &[v1::SocketCertificate],
        now_unix_secs: u64,
    ) -> Result<(), String> {
        if self.trusted_socket_keys.is_empty() && self.trusted_operator_keys.is_empty() {
            return Ok(());
        }
        let pinned = self
            .trusted_socket_keys
            .iter()
            .any(|k| k.serialize().as_slice() == offer.socket_identity_key);
        if pinned {
            return Ok(());
        }
        identity::verify_certificate(
            certificates,
            &offer.socket_identity_key,
            &offer.outlet_id,
            now_unix_secs,
            &self.trusted_operator_keys,
        )
        .map(|_| ())
        .map_err(|e| format!("the socket's key is neither pinned nor certified: {e}"))
    }

    /// Whether paying `next` after `paid` stays within the session budget.
    pub fn allows(&self, paid: Amount, next: Amount) -> bool {
        paid.checked_add(next)
            .is_some_and(|total| total.to_sat() <= self.max_session_sat)
    }

    /// The meter tolerance of the check of the socket's count.
    pub fn meter_tolerance(&self) -> proto::receipt::MeterTolerance {
        proto::receipt::MeterTolerance {
            percent: self.meter_tolerance_percent,
            mwh: self.meter_tolerance_mwh,
        }
    }

    /// The fee rate of on-chain payments.
    pub fn fee_rate(&self) -> FeeRate {
        FeeRate::from_sat_per_vb(self.fee_rate_sat_per_vb).unwrap_or(FeeRate::BROADCAST_MIN)
    }

    /// The fee rate, sat/vB, of on-chain payments of the `accepted` offer: the policy's when
    /// it is above the offer's minimum for its scheme (`SchemeTerms.min_fee_rate_sat_per_vb`),
    /// else one above that minimum: the wallet sets fees by weight (sat per 1000 weight
    /// units) and the socket checks them per vsize rounded up, which can fall just short of
    /// the minimum. The fee cap ([`Policy::max_fee`]) still bounds each payment.
    pub fn fee_rate_sat_per_vb_for(&self, accepted: &AcceptedOffer) -> u64 {
        let offered = accepted
            .offer
            .schemes
            .iter()
            .find(|s| s.scheme == accepted.scheme as i32)
            .map_or(0, |s| s.min_fee_rate_sat_per_vb);
        if self.fee_rate_sat_per_vb > offered {
            self.fee_rate_sat_per_vb
        } else {
            offered + 1
        }
    }

    /// [`Policy::fee_rate_sat_per_vb_for`] as a [`FeeRate`].
    pub fn fee_rate_for(&self, accepted: &AcceptedOffer) -> FeeRate {
        FeeRate::from_sat_per_vb(self.fee_rate_sat_per_vb_for(accepted))
            .unwrap_or(FeeRate::BROADCAST_MIN)
    }

    /// The fee cap of one payment.
    pub fn max_fee(&self) -> Amount {
        Amount::from_sat(self.max_fee_sat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_price_msat_per_wh: 200_000,
            max_session_sat: 5_000,
            schemes: vec![Scheme::Onchain],
            single_fee_max_sat: 10_000,
            fee_rate_sat_per_vb: 2,
            max_fee_sat: 2_000,
            spillman_lock_blocks: 144,
            trusted_socket_keys: vec![],
            trusted_operator_keys: vec![],
            meter_tolerance_percent: 5,
            meter_tolerance_mwh: 300,
        }
    }

    fn offer() -> v1::Offer {
        v1::Offer {
            network: v1::Network::Regtest as i32,
            price_msat_per_wh: 125_000,
            quota_mwh: 8_000,
            payout_script: bitcoin::ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_raw_hash(
                bitcoin::hashes::Hash::all_zeros(),
            ))
            .to_bytes(),
            schemes: vec![v1::SchemeTerms {
                scheme: v1::Scheme::Onchain as i32,
                min_payment_sat: 546,
                min_fee_rate_sat_per_vb: 0,
                terms: Some(v1::scheme_terms::Terms::Onchain(v1::OnchainOfferTerms {})),
            }],
            socket_identity_key: key(1).to_bytes(),
            ..Default::default()
        }
    }

    fn key(byte: u8) -> bitcoin::PublicKey {
        bitcoin::PublicKey::new(
            bitcoin::secp256k1::SecretKey::from_slice(&[byte; 32])
                .unwrap()
                .public_key(&bitcoin::secp256k1::Secp256k1::signing_only()),
        )
    }

    #[test]
    fn a_spillman_offer_must_fit_the_lock_time_and_the_budget() {
        let p = Policy {
            schemes: vec![Scheme::Spillman],
            ..policy()
        };
        let terms = v1::SpillmanOfferTerms {
            socket_channel_key: key(3).to_bytes(),
            min_deposit_sat: 2_000,
            min_lock_blocks: 12,
            max_lock_blocks: 1_008,
            close_margin_blocks: 6,
        };
        let with = |terms: v1::SpillmanOfferTerms| {
            let mut o = offer();
            o.schemes[0].scheme = v1::Scheme::Spillman as i32;
            o.schemes[0].terms = Some(v1::scheme_terms::Terms::Spillman(terms));
            o
        };
        assert_eq!(
            p.check_offer(&with(terms.clone()), Network::Regtest)
                .unwrap()
                .scheme,
            v1::Scheme::Spillman
        );
        let mut bare = with(terms.clone());
        bare.schemes[0].terms = None;
        assert!(p
            .check_offer(&bare, Network::Regtest)
            .unwrap_err()
            .contains("spillman without its terms"));
        let short = v1::SpillmanOfferTerms {
            max_lock_blocks: 100,
            ..terms.clone()
        };
        assert!(p
            .check_offer(&with(short), Network::Regtest)
            .unwrap_err()
            .contains("the policy locks 144"));
        let dear = v1::SpillmanOfferTerms {
            min_deposit_sat: 6_000,
            ..terms
        };
        assert!(p
            .check_offer(&with(dear), Network::Regtest)
            .unwrap_err()
            .contains("deposit of at least 6000 sat"));
    }

    #[test]
    fn a_fair_offer_is_accepted() {
        let accepted = policy().check_offer(&offer(), Network::Regtest).unwrap();
        assert_eq!(accepted.quota_amount, Amount::from_sat(1_000));
    }

    #[test]
    fn unfair_offers_are_refused_with_a_reason() {
        let p = policy();
        let mut o = offer();
        o.price_msat_per_wh = 300_000;
        assert!(p
            .check_offer(&o, Network::Regtest)
            .unwrap_err()
            .contains("above the policy"));
        assert!(p
            .check_offer(&offer(), Network::Bitcoin)
            .unwrap_err()
            .contains("wrong network"));
        let mut o = offer();
        o.payout_script = vec![0x6a];
        assert!(p
            .check_offer(&o, Network::Regtest)
            .unwrap_err()
            .contains("not a standard"));
        let mut o = offer();
        o.quota_mwh = 80_000;
        assert!(p
            .check_offer(&o, Network::Regtest)
            .unwrap_err()
            .contains("budget"));
        let mut o = offer();
        o.schemes.clear();
        assert!(p
            .check_offer(&o, Network::Regtest)
            .unwrap_err()
            .contains("onchain"));
    }

    #[test]
    fn a_policy_with_pins_or_operators_trusts_only_those_sockets() {
        let operator_secret = bitcoin::secp256k1::SecretKey::from_slice(&[2; 32]).unwrap();
        let o = offer();
        let open = policy();
        assert!(
            open.trusts(&o, &[], 0).is_ok(),
            "no pins, no operators: any signed socket"
        );
        let pinned = Policy {
            trusted_socket_keys: vec![key(1).inner],
            ..policy()
        };
        assert!(pinned.trusts(&o, &[], 0).is_ok());
        let other_pin = Policy {
            trusted_socket_keys: vec![key(3).inner],
            ..policy()
        };
        assert!(other_pin
            .trusts(&o, &[], 0)
            .unwrap_err()
            .contains("neither pinned nor certified"));
        let by_operator = Policy {
            trusted_operator_keys: vec![key(2).inner],
            ..policy()
        };
        let certificate = identity::certify(
            &v1::CertificateBody {
                operator_key: key(2).to_bytes(),
                socket_identity_key: o.socket_identity_key.clone(),
                outlet_ids: vec![o.outlet_id.clone()],
                expires_at_unix_secs: 2_000,
            },
            &operator_secret,
        );
        assert!(by_operator
            .trusts(&o, std::slice::from_ref(&certificate), 1_000)
            .is_ok());
        assert!(
            by_operator.trusts(&o, &[certificate], 3_000).is_err(),
            "expired"
        );
        assert!(by_operator.trusts(&o, &[], 1_000).is_err());
    }

    #[test]
    fn the_budget_caps_a_session() {
        let p = policy();
        assert!(p.allows(Amount::from_sat(4_000), Amount::from_sat(1_000)));
        assert!(!p.allows(Amount::from_sat(4_001), Amount::from_sat(1_000)));
    }
}
