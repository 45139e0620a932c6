//! Unit tests of the channel's transactions, checks and signatures.

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{absolute, Amount, OutPoint, PublicKey, ScriptBuf, Txid, WPubkeyHash};

use super::*;

fn key(byte: u8) -> (SecretKey, PublicKey) {
    let secret = SecretKey::from_slice(&[byte; 32]).unwrap();
    let public = PublicKey::new(secret.public_key(&Secp256k1::signing_only()));
    (secret, public)
}

fn channel() -> (Channel, SecretKey, SecretKey) {
    let (cable_secret, cable_key) = key(1);
    let (socket_secret, socket_key) = key(2);
    let channel = Channel {
        cable_key,
        socket_key,
        deposit: OutPoint::new(Txid::all_zeros(), 0),
        deposit_value: Amount::from_sat(20_000),
        refund_lock_height: 500,
        fee: Amount::from_sat(300),
        cable_script: ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([1; 20])),
        socket_script: ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([2; 20])),
    };
    (channel, cable_secret, socket_secret)
}

#[test]
fn the_fee_covers_a_signed_payment_with_change() {
    let (channel, ..) = channel();
    // One P2WSH 2-of-2 input with its witness, two P2WPKH outputs: about 170 vB.
    let fee = channel.fee_at(2).unwrap();
    assert!((320..=380).contains(&fee.to_sat()), "{fee}");
    let unset = Channel {
        deposit_value: Amount::ZERO,
        ..channel
    };
    assert_eq!(unset.fee_at(2).unwrap(), fee);
}

#[test]
fn the_deposit_is_a_p2wsh_two_of_two() {
    let (channel, ..) = channel();
    let descriptor = channel.descriptor().unwrap();
    assert!(channel.deposit_script_pubkey().unwrap().is_p2wsh());
    assert_eq!(
        descriptor.to_string().split('#').next().unwrap(),
        format!("wsh(multi(2,{},{}))", channel.cable_key, channel.socket_key)
    );
}

#[test]
fn a_payment_pays_the_total_and_returns_the_rest_less_the_fee() {
    let (channel, ..) = channel();
    let tx = channel.payment(Amount::from_sat(5_000)).unwrap();
    assert_eq!(tx.output[0].value, Amount::from_sat(5_000));
    assert_eq!(tx.output[0].script_pubkey, channel.socket_script);
    assert_eq!(tx.output[1].value, Amount::from_sat(14_700));
    assert_eq!(tx.output[1].script_pubkey, channel.cable_script);
    assert_eq!(tx.lock_time, absolute::LockTime::ZERO);
    // Change below the dust limit goes to the fee.
    let all = channel.payment(Amount::from_sat(19_600)).unwrap();
    assert_eq!(all.output.len(), 1);
    assert!(matches!(
        channel.payment(Amount::from_sat(19_701)),
        Err(SpillmanError::Total { .. })
    ));
    assert!(matches!(
        channel.payment(Amount::from_sat(100)),
        Err(SpillmanError::Total { .. })
    ));
}

#[test]
fn the_refund_is_timelocked_and_pays_the_cable() {
    let (channel, ..) = channel();
    let refund = channel.refund().unwrap();
    assert_eq!(
        refund.lock_time,
        absolute::LockTime::from_height(500).unwrap()
    );
    assert!(refund.input[0].sequence.enables_absolute_lock_time());
    assert_eq!(refund.output[0].value, Amount::from_sat(19_700));
    channel.check_refund(&refund).unwrap();
    assert!(channel.check_lock_height(400, 600).is_ok());
    assert!(matches!(
        channel.check_lock_height(501, 600),
        Err(SpillmanError::LockHeight { .. })
    ));
    let mut early = refund.clone();
    early.lock_time = absolute::LockTime::from_height(10).unwrap();
    let error = channel.check_refund(&early).unwrap_err().to_string();
    assert!(error.contains("lock time"), "{error}");
    let mut elsewhere = refund;
    elsewhere.output[0].script_pubkey = channel.socket_script.clone();
    let error = channel.check_refund(&elsewhere).unwrap_err().to_string();
    assert!(error.contains("outputs"), "{error}");
}

#[test]
fn the_socket_takes_only_the_exact_payment_signed_by_the_cable() {
    let (channel, cable_secret, socket_secret) = channel();
    let total = Amount::from_sat(2_000);
    let tx = channel.payment(total).unwrap();
    let signature = channel.sign(&tx, &cable_secret).unwrap();
    channel.check_payment(&tx, total, &signature).unwrap();
    // One quota short, or signed by another key, or for another total.
    assert!(matches!(
        channel.check_payment(&tx, Amount::from_sat(3_000), &signature),
        Err(SpillmanError::Payment { .. })
    ));
    let forged = channel.sign(&tx, &socket_secret).unwrap();
    assert_eq!(
        channel.check_payment(&tx, total, &forged),
        Err(SpillmanError::Signature("cable"))
    );
    let mut less_change = tx.clone();
    less_change.output[1].value -= Amount::from_sat(1);
    let signature_of_that = channel.sign(&less_change, &cable_secret).unwrap();
    assert!(matches!(
        channel.check_payment(&less_change, total, &signature_of_that),
        Err(SpillmanError::Payment { .. })
    ));
}

#[test]
fn both_signatures_make_a_two_of_two_witness() {
    let (channel, cable_secret, socket_secret) = channel();
    let tx = channel.payment(Amount::from_sat(1_000)).unwrap();
    let signed = channel
        .finalize(
            &tx,
            channel.sign(&tx, &cable_secret).unwrap(),
            channel.sign(&tx, &socket_secret).unwrap(),
        )
        .unwrap();
    // Empty item (CHECKMULTISIG's extra pop), two signatures, the witness script.
    let witness: Vec<&[u8]> = signed.input[0].witness.iter().collect();
    assert_eq!(witness.len(), 4);
    assert!(witness[0].is_empty());
    assert_eq!(
        witness[3],
        channel
            .descriptor()
            .unwrap()
            .explicit_script()
            .unwrap()
            .as_bytes()
    );
    channel
        .verify(
            &tx,
            Signer::Socket,
            &channel.sign(&tx, &socket_secret).unwrap(),
        )
        .unwrap();
}
