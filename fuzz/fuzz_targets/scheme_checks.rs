//! Each scheme's checks of what the other device sends (issue #14): the first byte picks one,
//! the rest is the hostile input. Nothing may panic, and the rules hold:
//! - 0: a `single-fee` payment (a PSBT) held by the socket's input set (`SellerSet::accept`):
//!   if taken, the same transaction again is refused (the value must rise by the increment)
//!   and the set's value is what the transaction pays the payout;
//! - 1: a `spillman` refund and payment (a PSBT's transaction, a DER signature) checked
//!   against a fixed channel (`check_refund`, `check_payment`): none that the fuzzer makes up
//!   passes, as none carries the cable's signature;
//! - 2: a `single-fee` PowerRequest reply checked by the cable's set (`BuyerSet::check_next`):
//!   if taken, it pays exactly one increment more;
//! - 3: a PowerRequest reply's terms read for every scheme.
#![no_main]

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Amount, OutPoint, PublicKey, ScriptBuf, Txid, WPubkeyHash};
use libfuzzer_sys::fuzz_target;
use proto::rules::decode_payment;
use proto::single_fee::{value_paid, BuyerSet, SellerSet, SetTerms};
use proto::spillman::Channel;
use prost::Message;

fn key(byte: u8) -> PublicKey {
    let secret = SecretKey::from_slice(&[byte; 32]).expect("in range");
    PublicKey::new(secret.public_key(&Secp256k1::signing_only()))
}

fn terms() -> SetTerms {
    SetTerms {
        payout_script: ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([9; 20])),
        increment: Amount::from_sat(1_000),
        max: Amount::from_sat(10_000),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let Ok(tx) = decode_payment(rest) else { return };
            let mut set = SellerSet::new(terms());
            if let Ok(value) = set.accept(tx.clone()) {
                assert_eq!(value, terms().increment);
                assert_eq!(value_paid(&tx, &terms().payout_script).ok(), Some(value));
                assert!(set.accept(tx).is_err(), "the same payment taken twice");
            }
        }
        1 => {
            let channel = Channel {
                cable_key: key(1),
                socket_key: key(2),
                deposit: OutPoint::new(Txid::from_byte_array([7; 32]), 0),
                deposit_value: Amount::from_sat(10_000),
                refund_lock_height: 500,
                fee: Amount::from_sat(400),
                cable_script: ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([1; 20])),
                socket_script: terms().payout_script,
            };
            let (signature, psbt) = rest.split_at(rest.len().min(72));
            let Ok(tx) = decode_payment(psbt) else { return };
            let _ = channel.check_refund(&tx);
            if let Ok(signature) = bitcoin::ecdsa::Signature::from_slice(signature) {
                let to_socket = Amount::from_sat(u64::from(rest[0]) * 100);
                assert!(channel.check_payment(&tx, to_socket, &signature).is_err());
            }
        }
        2 => {
            let Ok(reply) = proto::v1::PowerRequestResponse::decode(rest) else {
                return;
            };
            let set = BuyerSet {
                terms: terms(),
                inputs: vec![OutPoint::new(Txid::from_byte_array([3; 32]), 1)],
                fee: Amount::from_sat(300),
                highest: Amount::from_sat(2_000),
            };
            if let Ok(value) = set.check_next(&reply) {
                assert_eq!(value, Amount::from_sat(3_000));
            }
        }
        _ => {
            let Ok(reply) = proto::v1::PowerRequestResponse::decode(rest) else {
                return;
            };
            let _ = proto::terms::onchain_terms(&reply);
            let _ = proto::terms::single_fee_terms(&reply);
            let _ = proto::terms::spillman_terms(&reply);
            let _ = proto::terms::lightning_terms(&reply);
        }
    }
});
