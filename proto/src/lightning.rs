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

/// Custom TLV type of a keysend's authentication: the cable's BIP 340 signature (64 bytes)
/// over [`keysend_message`] with tag `t2t/keysend`, by the identity key that opened the session
/// (socket.proto `LightningOfferTerms.keysend`). "t2t" in ASCII, then 03 (odd, like
/// [`SESSION_TLV_TYPE`]).
pub const SESSION_AUTH_TLV_TYPE: u64 = 0x7432_7403;

bitcoin::hashes::sha256t_hash_newtype! {
    /// Tag `t2t/keysend`.
    pub struct KeysendTag = hash_str("t2t/keysend");
    /// BIP 340 tagged hash of a keysend's [`keysend_message`].
    pub struct KeysendHash(_);
}

/// The message m a keysend's authentication signs: u32-BE length ‖ session id (UTF-8) ‖
/// payment id u64-BE ‖ amount in msat u64-BE (what the cable sends: the socket blames a wrong
/// amount only when the cable signed it, not when a node on the route changed it) ‖ the
/// keysend's payment hash (32 bytes, SHA256 of its preimage, in the order BOLT 4 carries it).
/// Binding the payment hash makes a signature good for one payment only: nobody but the payer
/// and the payee knows the preimage that makes that hash.
pub fn keysend_message(
    record: &SessionRecord,
    amount_msat: u64,
    payment_hash: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(4 + record.session_id.len() + 16 + 32);
    m.extend_from_slice(&(record.session_id.len() as u32).to_be_bytes());
    m.extend_from_slice(record.session_id.as_bytes());
    m.extend_from_slice(&record.payment_id.to_be_bytes());
    m.extend_from_slice(&amount_msat.to_be_bytes());
    m.extend_from_slice(payment_hash);
    m
}

/// `TaggedHash("t2t/keysend", m)` of [`keysend_message`].
pub fn keysend_hash(
    record: &SessionRecord,
    amount_msat: u64,
    payment_hash: &[u8; 32],
) -> KeysendHash {
    use bitcoin::hashes::Hash;
    KeysendHash::hash(&keysend_message(record, amount_msat, payment_hash))
}

/// The value of the [`SESSION_AUTH_TLV_TYPE`] record: the cable's signature, by its identity
/// secret `cable_secret`, of the keysend of `amount_msat` paying `record` with `payment_hash`.
pub fn sign_keysend(
    record: &SessionRecord,
    amount_msat: u64,
    payment_hash: &[u8; 32],
    cable_secret: &bitcoin::secp256k1::SecretKey,
) -> Vec<u8> {
    use bitcoin::hashes::Hash;
    crate::identity::sign(
        keysend_hash(record, amount_msat, payment_hash).to_byte_array(),
        &crate::identity::keypair(cable_secret),
    )
}

/// The socket's check that the cable whose identity key is `cable_key` (the key that opened
/// the session) signed the keysend of `amount_msat` (as received) paying `record` with
/// `payment_hash`: `signature` is the value of the first custom TLV of type
/// [`SESSION_AUTH_TLV_TYPE`].
///
/// Errors: [`crate::identity::IdentityError::Signature`] when it is not 64 bytes or not that
/// key's BIP 340 signature of [`keysend_hash`]. A keysend that fails this is a stranger's:
/// booked, never blamed on the session's cable (design.md "Blame needs proof").
pub fn verify_keysend(
    record: &SessionRecord,
    amount_msat: u64,
    payment_hash: &[u8; 32],
    signature: &[u8],
    cable_key: &bitcoin::secp256k1::PublicKey,
) -> Result<(), crate::identity::IdentityError> {
    use bitcoin::hashes::Hash;
    crate::identity::verify(
        keysend_hash(record, amount_msat, payment_hash).to_byte_array(),
        signature,
        cable_key,
        "keysend",
    )
}

/// The value of the first custom TLV of type [`SESSION_AUTH_TLV_TYPE`] among (type, value)
/// records, if any.
pub fn keysend_auth<'a>(records: impl IntoIterator<Item = (u64, &'a [u8])>) -> Option<&'a [u8]> {
    records
        .into_iter()
        .find(|(type_num, _)| *type_num == SESSION_AUTH_TLV_TYPE)
        .map(|(_, value)| value)
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

    /// `proto/testvectors/keysend_record.json`, `signed`: the authentication of a keysend, its
    /// message and digest byte for byte, and a signature that verifies (made without auxiliary
    /// randomness, aux = 32 zero bytes, so it is reproducible).
    #[test]
    fn the_keysend_auth_test_vectors_hold_and_bind_every_field() {
        use bitcoin::hex::FromHex;
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../testvectors/keysend_record.json")).unwrap();
        assert_eq!(
            vectors["auth_tlv_type"].as_u64(),
            Some(SESSION_AUTH_TLV_TYPE)
        );
        let hex = |v: &serde_json::Value| Vec::<u8>::from_hex(v.as_str().unwrap()).unwrap();
        let signed = &vectors["signed"];
        let secret = SecretKey::from_slice(&hex(&signed["secret_key_hex"])).unwrap();
        let key = secret.public_key(&Secp256k1::new());
        assert_eq!(
            key.serialize().to_vec(),
            hex(&signed["cable_identity_key_hex"])
        );
        let record = SessionRecord {
            session_id: signed["session_id"].as_str().unwrap().into(),
            payment_id: signed["payment_id"].as_u64().unwrap(),
        };
        let payment_hash: [u8; 32] = hex(&signed["payment_hash_hex"]).try_into().unwrap();
        let amount_msat = signed["amount_msat"].as_u64().unwrap();
        assert_eq!(
            keysend_message(&record, amount_msat, &payment_hash),
            hex(&signed["message_hex"])
        );
        let digest = keysend_hash(&record, amount_msat, &payment_hash);
        assert_eq!(digest.to_byte_array().to_vec(), hex(&signed["digest_hex"]));
        let signature = hex(&signed["signature_hex"]);
        let no_aux = Secp256k1::new().sign_schnorr_no_aux_rand(
            &bitcoin::secp256k1::Message::from_digest(digest.to_byte_array()),
            &bitcoin::secp256k1::Keypair::from_secret_key(&Secp256k1::new(), &secret),
        );
        assert_eq!(no_aux.as_ref().to_vec(), signature);
        verify_keysend(&record, amount_msat, &payment_hash, &signature, &key).unwrap();
        let fresh = sign_keysend(&record, amount_msat, &payment_hash, &secret);
        verify_keysend(&record, amount_msat, &payment_hash, &fresh, &key).unwrap();

        // Each field is bound: another payment id, session, amount, payment hash or key fails.
        assert!(verify_keysend(&record, amount_msat + 1, &payment_hash, &signature, &key).is_err());
        let other_id = SessionRecord {
            payment_id: record.payment_id + 1,
            ..record.clone()
        };
        assert!(verify_keysend(&other_id, amount_msat, &payment_hash, &signature, &key).is_err());
        let other_session = SessionRecord {
            session_id: "x".into(),
            ..record.clone()
        };
        assert!(
            verify_keysend(&other_session, amount_msat, &payment_hash, &signature, &key).is_err()
        );
        assert!(verify_keysend(&record, amount_msat, &[0; 32], &signature, &key).is_err());
        let stranger = SecretKey::from_slice(&[0x22; 32]).unwrap();
        let forged = sign_keysend(&record, amount_msat, &payment_hash, &stranger);
        assert!(verify_keysend(&record, amount_msat, &payment_hash, &forged, &key).is_err());
        assert!(
            verify_keysend(&record, amount_msat, &payment_hash, &signature[..63], &key).is_err()
        );
        let tlvs: [(u64, &[u8]); 2] = [(SESSION_TLV_TYPE, b"x"), (SESSION_AUTH_TLV_TYPE, &fresh)];
        assert_eq!(keysend_auth(tlvs), Some(&fresh[..]));
        assert_eq!(keysend_auth([(SESSION_TLV_TYPE, &b"x"[..])]), None);
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
