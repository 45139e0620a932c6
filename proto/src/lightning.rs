//! The `lightning` scheme's checks of hostile input (design.md "Payment schemes", `lightning`):
//! the cable's checks of a socket's BOLT 11 invoice, and the session record a keysend carries
//! (socket.proto, `LightningOfferTerms.keysend`).
//!
//! Both are pure: no Lightning node, no clock (the caller passes the time), so the fuzz target
//! `lightning` runs them on any bytes.

use std::time::Duration;

use bitcoin::hex::DisplayHex;
use lightning_invoice::Bolt11Invoice;

/// Why the cable refuses an invoice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    /// Not a BOLT 11 invoice (bech32, fields or signature).
    #[error("not a BOLT11 invoice: {0}")]
    Malformed(String),
    /// The invoice pays another node than the offer's.
    #[error("the invoice pays node {got}, not the offer's {expected}")]
    Payee {
        /// The offer's node id, hex.
        expected: String,
        /// The invoice's payee, hex.
        got: String,
    },
    /// The invoice asks for another amount than price × quota.
    #[error("the invoice asks {got_msat:?} msat, not price x quota = {expected_msat} msat")]
    Amount {
        /// price × quota.
        expected_msat: u64,
        /// The invoice's amount (`None`: open amount).
        got_msat: Option<u64>,
    },
    /// The invoice's payment hash was paid before: paying it again pays twice for one quota.
    #[error("the invoice's payment hash {0} was already paid")]
    AlreadyPaid(String),
    /// The invoice expired (BOLT 11 `x`, default 3600 s after its timestamp).
    #[error("the invoice has expired")]
    Expired,
}

/// The cable's checks of a socket's invoice (BOLT 11), in this order: it parses and its
/// signature holds; its payee (the `n` field, or the key recovered from the signature) is
/// `offer_node_id` (33-byte compressed key from `LightningOfferTerms.node_id`); its amount is
/// exactly `expected_msat` (price × quota; an open amount is refused); its payment hash (hex,
/// as [`payment_hash_hex`] gives it) is not one `already_paid` knows; it has not expired at
/// `now` (time since the UNIX epoch).
///
/// Errors: the first check that fails, as an [`InvoiceError`].
pub fn check_invoice(
    invoice: &str,
    offer_node_id: &[u8],
    expected_msat: u64,
    already_paid: impl Fn(&str) -> bool,
    now: Duration,
) -> Result<Bolt11Invoice, InvoiceError> {
    let invoice: Bolt11Invoice =
        invoice
            .parse()
            .map_err(|e: lightning_invoice::ParseOrSemanticError| {
                InvoiceError::Malformed(e.to_string())
            })?;
    let payee = invoice.get_payee_pub_key();
    if payee.serialize().as_slice() != offer_node_id {
        return Err(InvoiceError::Payee {
            expected: offer_node_id.to_lower_hex_string(),
            got: payee.to_string(),
        });
    }
    if invoice.amount_milli_satoshis() != Some(expected_msat) {
        return Err(InvoiceError::Amount {
            expected_msat,
            got_msat: invoice.amount_milli_satoshis(),
        });
    }
    let hash = payment_hash_hex(&invoice);
    if already_paid(&hash) {
        return Err(InvoiceError::AlreadyPaid(hash));
    }
    if invoice.would_expire(now) {
        return Err(InvoiceError::Expired);
    }
    Ok(invoice)
}

/// The payment hash of an invoice, 64 lowercase hex digits, as both nodes store it.
pub fn payment_hash_hex(invoice: &Bolt11Invoice) -> String {
    invoice.payment_hash().to_string()
}

/// Custom TLV type of a [`SessionRecord`] in a keysend's onion payload (BOLT 4 `payload`;
/// custom records live at types ≥ 2^16, and an odd type lets a node that does not know it
/// still accept the payment). "t2t" in ASCII, then 01.
pub const SESSION_TLV_TYPE: u64 = 0x7432_7401;

/// Longest session id a [`SessionRecord`] carries, bytes.
pub const MAX_SESSION_ID_LEN: usize = 64;

/// What a keysend pays for (design.md `lightning`, the fast path): a session and the payment
/// id within it. The TLV value is the payment id (8 bytes, big-endian) then the session id
/// (UTF-8, 1–[`MAX_SESSION_ID_LEN`] bytes): 9–72 bytes in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id the socket gave.
    pub session_id: String,
    /// The payment's id in the session, one above the last one paid.
    pub payment_id: u64,
}

/// Why a keysend's session record is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRecordError {
    /// No record of type [`SESSION_TLV_TYPE`]: a keysend that names no session.
    #[error("the keysend carries no t2t session record")]
    Missing,
    /// A record of that type that does not decode.
    #[error("malformed t2t session record: {0}")]
    Malformed(&'static str),
}

impl SessionRecord {
    /// The record's TLV value (type [`SESSION_TLV_TYPE`]).
    pub fn tlv_value(&self) -> Vec<u8> {
        let mut value = self.payment_id.to_be_bytes().to_vec();
        value.extend_from_slice(self.session_id.as_bytes());
        value
    }

    /// Find and decode the record among a payment's custom TLVs, given as (type, value): the
    /// first of type [`SESSION_TLV_TYPE`] counts.
    ///
    /// Errors: [`SessionRecordError::Missing`] without one; `Malformed` when its value is not
    /// 9–72 bytes or the session id is not UTF-8.
    pub fn from_tlvs<'a>(
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<Self, SessionRecordError> {
        let (_, value) = records
            .into_iter()
            .find(|(type_num, _)| *type_num == SESSION_TLV_TYPE)
            .ok_or(SessionRecordError::Missing)?;
        if value.len() <= 8 || value.len() > 8 + MAX_SESSION_ID_LEN {
            return Err(SessionRecordError::Malformed("length"));
        }
        let (id, session) = value.split_at(8);
        let payment_id = u64::from_be_bytes(id.try_into().expect("split at 8"));
        let session_id = std::str::from_utf8(session)
            .map_err(|_| SessionRecordError::Malformed("session id is not UTF-8"))?
            .to_owned();
        Ok(SessionRecord {
            session_id,
            payment_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::{sha256, Hash};
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};

    /// An invoice of `amount_msat` (`None`: open amount) signed by `key`, made at 1.7e9 s
    /// since the epoch, expiring an hour later.
    fn invoice(key: &SecretKey, amount_msat: Option<u64>, preimage: u8) -> String {
        let builder = InvoiceBuilder::new(Currency::Regtest)
            .description("t2t quota".into())
            .payment_hash(sha256::Hash::hash(&[preimage; 32]))
            .payment_secret(PaymentSecret([7; 32]))
            .duration_since_epoch(Duration::from_secs(1_700_000_000))
            .min_final_cltv_expiry_delta(144)
            .expiry_time(Duration::from_secs(3600));
        let builder = match amount_msat {
            Some(msat) => builder.amount_milli_satoshis(msat),
            None => builder,
        };
        builder
            .build_signed(|hash| Secp256k1::new().sign_ecdsa_recoverable(hash, key))
            .expect("a whole invoice")
            .to_string()
    }

    #[test]
    fn an_invoice_passes_only_for_the_offers_node_amount_unpaid_hash_and_time() {
        let key = SecretKey::from_slice(&[0x11; 32]).unwrap();
        let node_id = key.public_key(&Secp256k1::new()).serialize();
        let other = SecretKey::from_slice(&[0x22; 32]).unwrap();
        let in_time = Duration::from_secs(1_700_000_000 + 60);
        let never_paid = |_: &str| false;

        let good = invoice(&key, Some(5_000_000), 1);
        let checked = check_invoice(&good, &node_id, 5_000_000, never_paid, in_time).unwrap();
        let hash = payment_hash_hex(&checked);
        assert_eq!(hash, sha256::Hash::hash(&[1; 32]).to_string());

        assert!(matches!(
            check_invoice(
                &invoice(&other, Some(5_000_000), 1),
                &node_id,
                5_000_000,
                never_paid,
                in_time
            ),
            Err(InvoiceError::Payee { .. })
        ));
        assert_eq!(
            check_invoice(&good, &node_id, 4_999_999, never_paid, in_time).unwrap_err(),
            InvoiceError::Amount {
                expected_msat: 4_999_999,
                got_msat: Some(5_000_000)
            }
        );
        assert_eq!(
            check_invoice(
                &invoice(&key, None, 1),
                &node_id,
                5_000_000,
                never_paid,
                in_time
            )
            .unwrap_err(),
            InvoiceError::Amount {
                expected_msat: 5_000_000,
                got_msat: None
            }
        );
        assert_eq!(
            check_invoice(&good, &node_id, 5_000_000, |h| h == hash, in_time).unwrap_err(),
            InvoiceError::AlreadyPaid(hash.clone())
        );
        let late = Duration::from_secs(1_700_000_000 + 3601);
        assert_eq!(
            check_invoice(&good, &node_id, 5_000_000, never_paid, late).unwrap_err(),
            InvoiceError::Expired
        );
        let mut tampered = good.clone().into_bytes();
        let at = tampered.len() - 10;
        tampered[at] = if tampered[at] == b'q' { b'p' } else { b'q' };
        assert!(matches!(
            check_invoice(
                std::str::from_utf8(&tampered).unwrap(),
                &node_id,
                5_000_000,
                never_paid,
                in_time
            ),
            Err(InvoiceError::Malformed(_))
        ));
    }

    /// `proto/testvectors/keysend_record.json`: session records byte for byte, and values
    /// that are not one, for implementers in other languages.
    #[test]
    fn the_keysend_record_test_vectors_hold() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../testvectors/keysend_record.json")).unwrap();
        assert_eq!(vectors["tlv_type"].as_u64(), Some(SESSION_TLV_TYPE));
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            <Vec<u8> as bitcoin::hex::FromHex>::from_hex(v["value_hex"].as_str().unwrap()).unwrap()
        };
        for vector in vectors["valid"].as_array().unwrap() {
            let record = SessionRecord {
                session_id: vector["session_id"].as_str().unwrap().to_owned(),
                payment_id: vector["payment_id"].as_u64().unwrap(),
            };
            assert_eq!(record.tlv_value(), bytes(vector), "{vector}");
            let value = bytes(vector);
            assert_eq!(
                SessionRecord::from_tlvs([(SESSION_TLV_TYPE, &value[..])]),
                Ok(record)
            );
        }
        for vector in vectors["invalid"].as_array().unwrap() {
            let value = bytes(vector);
            assert!(
                matches!(
                    SessionRecord::from_tlvs([(SESSION_TLV_TYPE, &value[..])]),
                    Err(SessionRecordError::Malformed(_))
                ),
                "{vector}"
            );
        }
    }

    #[test]
    fn a_session_record_survives_the_trip_and_bad_ones_are_named() {
        let record = SessionRecord {
            session_id: "ef79697fb77c442607bfb2e178df4938".into(),
            payment_id: 7,
        };
        let value = record.tlv_value();
        let other: (u64, &[u8]) = (65_537, &[1, 2]);
        assert_eq!(
            SessionRecord::from_tlvs([other, (SESSION_TLV_TYPE, &value[..])]),
            Ok(record)
        );
        assert_eq!(
            SessionRecord::from_tlvs([other]),
            Err(SessionRecordError::Missing)
        );
        assert_eq!(
            SessionRecord::from_tlvs([(SESSION_TLV_TYPE, &[0u8; 8][..])]),
            Err(SessionRecordError::Malformed("length"))
        );
        assert_eq!(
            SessionRecord::from_tlvs([(SESSION_TLV_TYPE, &[b'a'; 73][..])]),
            Err(SessionRecordError::Malformed("length"))
        );
        let mut bad_utf8 = vec![0; 8];
        bad_utf8.push(0xff);
        assert!(matches!(
            SessionRecord::from_tlvs([(SESSION_TLV_TYPE, &bad_utf8[..])]),
            Err(SessionRecordError::Malformed(_))
        ));
    }
}
