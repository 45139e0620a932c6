//! A payment PSBT from a stranger (`PayTransactionRequest.psbt`): decoded and checked against
//! fixed `onchain` terms, and its value to the payout counted as `single-fee` does. Nothing may
//! panic.
#![no_main]

use bitcoin::hashes::Hash;
use bitcoin::{Amount, ScriptBuf, WPubkeyHash};
use libfuzzer_sys::fuzz_target;
use proto::rules::{check_onchain_payment, decode_payment, OnchainTerms};
use proto::units::EnergyMwh;

fuzz_target!(|data: &[u8]| {
    let payout = ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([9; 20]));
    if let Ok(tx) = decode_payment(data) {
        let terms = OnchainTerms {
            payout_script: payout.clone(),
            amount: Amount::from_sat(1_000),
            quota: EnergyMwh(8_000),
        };
        let _ = check_onchain_payment(&tx, &terms);
        let _ = proto::single_fee::value_paid(&tx, &payout);
    }
});
