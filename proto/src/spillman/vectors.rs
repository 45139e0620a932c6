//! `proto/testvectors/spillman_transactions.json` (socket.proto, "The spillman channel's
//! transactions"): the deposit script, the refund and payments byte for byte, rebuilt from the
//! file's fixed channel with this module's functions, for implementers in other languages.

use bitcoin::consensus::encode;
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Amount, OutPoint, PublicKey, ScriptBuf, Transaction, TxOut};
use serde_json::{json, Value};

use super::*;

fn hex(v: &Value) -> Vec<u8> {
    Vec::<u8>::from_hex(v.as_str().unwrap()).unwrap()
}

fn secret(v: &Value) -> SecretKey {
    SecretKey::from_slice(&hex(v)).unwrap()
}

/// Everything the file states of `tx`: unsigned and signed by both keys.
fn transaction(
    channel: &Channel,
    tx: &Transaction,
    cable: &SecretKey,
    socket: &SecretKey,
) -> Value {
    let cable_signature = channel.sign(tx, cable).unwrap();
    let socket_signature = channel.sign(tx, socket).unwrap();
    channel.verify(tx, Signer::Cable, &cable_signature).unwrap();
    channel
        .verify(tx, Signer::Socket, &socket_signature)
        .unwrap();
    let signed = channel
        .finalize(tx, cable_signature, socket_signature)
        .unwrap();
    json!({
        "unsigned_tx_hex": encode::serialize_hex(tx),
        "txid": tx.compute_txid().to_string(),
        "sighash_hex": channel.sighash(tx).unwrap().to_string(),
        "cable_signature_hex": cable_signature.to_vec().to_lower_hex_string(),
        "socket_signature_hex": socket_signature.to_vec().to_lower_hex_string(),
        "signed_tx_hex": encode::serialize_hex(&signed),
        "signed_weight_wu": signed.weight().to_wu(),
    })
}

/// The vectors the file's `channel` and `payments_to_socket_sat` give.
fn build(file: &Value) -> Value {
    let inputs = &file["channel"];
    let secp = Secp256k1::signing_only();
    let (cable_secret, socket_secret) = (
        secret(&inputs["cable_secret_key_hex"]),
        secret(&inputs["socket_secret_key_hex"]),
    );
    let mut channel = Channel {
        cable_key: PublicKey::new(cable_secret.public_key(&secp)),
        socket_key: PublicKey::new(socket_secret.public_key(&secp)),
        deposit: OutPoint::new(
            inputs["deposit_txid"].as_str().unwrap().parse().unwrap(),
            inputs["deposit_vout"].as_u64().unwrap() as u32,
        ),
        deposit_value: Amount::from_sat(inputs["deposit_sat"].as_u64().unwrap()),
        refund_lock_height: inputs["refund_lock_height"].as_u64().unwrap() as u32,
        fee: Amount::ZERO,
        cable_script: ScriptBuf::from_bytes(hex(&inputs["cable_script_hex"])),
        socket_script: ScriptBuf::from_bytes(hex(&inputs["socket_script_hex"])),
    };
    let rate = inputs["min_fee_rate_sat_per_vb"].as_u64().unwrap();
    channel.fee = channel.fee_at(rate).unwrap();
    let descriptor = channel.descriptor().unwrap();
    let witness_script = descriptor.explicit_script().unwrap();
    let refund = channel.refund().unwrap();
    channel.check_refund(&refund).unwrap();
    let (min, max) = channel.total_range();
    let payments: Vec<Value> = file["payments_to_socket_sat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|total| {
            let total = Amount::from_sat(total.as_u64().unwrap());
            let tx = channel.payment(total).unwrap();
            let signature = channel.sign(&tx, &cable_secret).unwrap();
            // The PayTransactionRequest.psbt a t2t cable sends (cable-node payer/spillman.rs
            // `sign_payment`), and what the socket reads of it: the unsigned transaction and
            // the cable's partial signature (socket-node seller/spillman.rs `pay`).
            let mut psbt = Psbt::from_unsigned_tx(tx.clone()).unwrap();
            psbt.inputs[0].witness_utxo = Some(TxOut {
                value: channel.deposit_value,
                script_pubkey: channel.deposit_script_pubkey().unwrap(),
            });
            psbt.inputs[0].witness_script = Some(witness_script.clone());
            psbt.inputs[0]
                .partial_sigs
                .insert(channel.cable_key, signature);
            let read = Psbt::deserialize(&psbt.serialize()).unwrap();
            let sent = read.inputs[0].partial_sigs[&channel.cable_key];
            channel
                .check_payment(&read.unsigned_tx, total, &sent)
                .unwrap();
            let mut vector = transaction(&channel, &tx, &cable_secret, &socket_secret);
            vector["to_socket_sat"] = json!(total.to_sat());
            vector["psbt_hex"] = json!(psbt.serialize().to_lower_hex_string());
            vector
        })
        .collect();
    json!({
        "keys": {
            "cable_channel_key_hex": channel.cable_key.to_bytes().to_lower_hex_string(),
            "socket_channel_key_hex": channel.socket_key.to_bytes().to_lower_hex_string(),
        },
        "deposit": {
            "descriptor": descriptor.to_string(),
            "witness_script_hex": witness_script.to_hex_string(),
            "script_pubkey_hex": channel.deposit_script_pubkey().unwrap().to_hex_string(),
            "outpoint_hex": encode::serialize_hex(&channel.deposit),
        },
        "fee": {
            "witness_weight_wu": descriptor.max_weight_to_satisfy().unwrap().to_wu(),
            "signed_vsize": channel.signed_vsize(&channel.payment(min).unwrap()).unwrap(),
            "fee_sat": channel.fee.to_sat(),
        },
        "dust": {
            "min_to_socket_sat": min.to_sat(),
            "max_to_socket_sat": max.to_sat(),
            "min_change_sat": channel.cable_script.minimal_non_dust().to_sat(),
        },
        "refund": transaction(&channel, &refund, &cable_secret, &socket_secret),
        "payments": payments,
    })
}

#[test]
fn the_spillman_transaction_test_vectors_hold() {
    let file: Value =
        serde_json::from_str(include_str!("../../testvectors/spillman_transactions.json")).unwrap();
    let built = build(&file);
    for (field, value) in built.as_object().unwrap() {
        assert_eq!(&file[field], value, "{field}");
    }
    // The keys stand in the script as they come (cable, socket), not sorted: the cable's
    // key sorts after the socket's here, so a sorted script would differ.
    assert!(
        file["keys"]["cable_channel_key_hex"].as_str()
            > file["keys"]["socket_channel_key_hex"].as_str()
    );
}
