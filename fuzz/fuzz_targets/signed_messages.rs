//! Signed messages from strangers: a status report, a metering receipt, an operator's registry
//! and a socket certificate, each decoded and verified against fixed keys (the first byte picks
//! the message). Nothing may panic; nothing unsigned may verify.
#![no_main]

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1;

fn key(byte: u8) -> PublicKey {
    SecretKey::from_slice(&[byte; 32])
        .expect("in range")
        .public_key(&Secp256k1::signing_only())
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(signed) = v1::SignedStatus::decode(rest) {
                let _ = proto::identity::verify_status(&signed, &key(1), "outlet-1");
            }
        }
        1 => {
            if let Ok(receipt) = v1::MeteringReceipt::decode(rest) {
                let _ =
                    proto::receipt::verify_receipt(&receipt, &key(3), &key(1), "outlet-1", "5e55");
            }
        }
        2 => {
            if let Ok(registry) = v1::SignedRegistry::decode(rest) {
                let _ = proto::registry::verify_registry(&registry, &[key(2)]);
            }
        }
        _ => {
            if let Ok(certificate) = v1::SocketCertificate::decode(rest) {
                let _ = proto::identity::verify_certificate(
                    &[certificate],
                    &key(1).serialize(),
                    "outlet-1",
                    1_800_000_000,
                    &[key(2)],
                );
            }
        }
    }
});
