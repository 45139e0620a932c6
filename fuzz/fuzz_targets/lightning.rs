//! The `lightning` scheme's checks of what the other device sends (issue #14,
//! `proto::lightning`): the first byte picks one, the rest is the hostile input. Nothing may
//! panic, and the rules hold:
//! - 0: a keysend's custom TLVs (8-byte type, 1-byte length, value; repeated) read by
//!   `SessionRecord::from_tlvs`: `Missing` exactly when no record has the session type; a
//!   record read gives back the first such value byte for byte;
//! - 1: any text checked as a socket's BOLT 11 invoice: one that passes pays the offer's node
//!   exactly the expected amount and has not expired;
//! - 2: an invoice made from fuzzed fields (signer, amount, timestamp, expiry, the clock, a
//!   paid hash) and signed: `check_invoice` gives exactly the verdict the rules say, in their
//!   order (payee, amount, already paid, expired).
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{All, Secp256k1, SecretKey};
use libfuzzer_sys::fuzz_target;
use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
use proto::lightning::{check_invoice, InvoiceError, SessionRecord, SESSION_TLV_TYPE};

static SECP: LazyLock<Secp256k1<All>> = LazyLock::new(Secp256k1::new);

fn secret(byte: u8) -> SecretKey {
    SecretKey::from_slice(&[byte; 32]).expect("in range")
}

/// The offer's node id: the key of `secret(1)`.
fn offer_node_id() -> [u8; 33] {
    static NODE_ID: LazyLock<[u8; 33]> = LazyLock::new(|| secret(1).public_key(&SECP).serialize());
    *NODE_ID
}

/// Reads (type, value) records: 8 bytes of type (one in four bytes' worth of types is forced
/// to the session type so the fuzzer meets it), a length byte, the value.
fn tlvs(mut rest: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut records = Vec::new();
    while rest.len() >= 9 {
        let mut type_num = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        if type_num % 4 == 0 {
            type_num = SESSION_TLV_TYPE;
        }
        let len = usize::from(rest[8]).min(rest.len() - 9);
        records.push((type_num, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    records
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    for (i, b) in word.iter_mut().enumerate() {
        *b = bytes.get(at + i).copied().unwrap_or(0);
    }
    u64::from_be_bytes(word)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let records = tlvs(rest);
            let read = SessionRecord::from_tlvs(records.iter().map(|(t, v)| (*t, v.as_slice())));
            let first = records.iter().find(|(t, _)| *t == SESSION_TLV_TYPE);
            match (read, first) {
                (Err(proto::lightning::SessionRecordError::Missing), None) => {}
                (Err(proto::lightning::SessionRecordError::Missing), Some(_)) => {
                    panic!("a session record there, read as missing")
                }
                (_, None) => panic!("no session record, yet one was read"),
                (Ok(record), Some((_, value))) => assert_eq!(&record.tlv_value(), value),
                (Err(_), Some(_)) => {}
            }
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            let now = Duration::from_secs(1_700_000_000);
            if let Ok(invoice) = check_invoice(&text, &offer_node_id(), 5_000, |_| false, now) {
                assert_eq!(invoice.get_payee_pub_key().serialize(), offer_node_id());
                assert_eq!(invoice.amount_milli_satoshis(), Some(5_000));
                assert!(!invoice.would_expire(now));
            }
        }
        _ => {
            let signer = 1 + rest.first().copied().unwrap_or(0) % 2;
            let amount_msat = u64_at(rest, 1) % 4_000_000;
            let open_amount = amount_msat % 7 == 0;
            let expected_msat = u64_at(rest, 9) % 4_000_000;
            let timestamp = u64_at(rest, 17) % (1 << 35);
            let expiry = u64_at(rest, 25) % (1 << 40);
            let now = Duration::from_secs(u64_at(rest, 33));
            let paid = rest.get(41).is_some_and(|b| b % 2 == 1);
            let builder = InvoiceBuilder::new(Currency::Regtest)
                .description(String::from_utf8_lossy(rest.get(42..).unwrap_or(&[])).into())
                .payment_hash(sha256::Hash::hash(rest))
                .payment_secret(PaymentSecret([7; 32]))
                .duration_since_epoch(Duration::from_secs(timestamp))
                .min_final_cltv_expiry_delta(144)
                .expiry_time(Duration::from_secs(expiry));
            let builder = if open_amount {
                builder
            } else {
                builder.amount_milli_satoshis(amount_msat)
            };
            let Ok(invoice) =
                builder.build_signed(|hash| SECP.sign_ecdsa_recoverable(hash, &secret(signer)))
            else {
                return;
            };
            let text = invoice.to_string();
            let verdict = check_invoice(&text, &offer_node_id(), expected_msat, |_| paid, now);
            let expired =
                Duration::from_secs(timestamp).saturating_add(Duration::from_secs(expiry)) < now;
            match verdict {
                Ok(checked) => {
                    assert_eq!(signer, 1);
                    assert!(!open_amount && amount_msat == expected_msat && !paid && !expired);
                    assert_eq!(checked, invoice);
                }
                Err(InvoiceError::Malformed(e)) => panic!("a made invoice does not parse: {e}"),
                Err(InvoiceError::Payee { .. }) => assert_eq!(signer, 2),
                Err(InvoiceError::Amount { .. }) => {
                    assert_eq!(signer, 1);
                    assert!(open_amount || amount_msat != expected_msat);
                }
                Err(InvoiceError::AlreadyPaid(_)) => {
                    assert!(signer == 1 && !open_amount && amount_msat == expected_msat && paid)
                }
                Err(InvoiceError::Expired) => {
                    assert!(signer == 1 && !open_amount && amount_msat == expected_msat);
                    assert!(!paid && expired);
                }
            }
        }
    }
});
