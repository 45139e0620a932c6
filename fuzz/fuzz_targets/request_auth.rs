//! A signed request from a stranger (`RequestAuth` on `PayTransaction` and `PowerRequest`):
//! decoded and its signature checked as the socket does first. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1;

/// A socket: the x-only generator point's key, on regtest.
fn socket() -> proto::request_auth::Recipient {
    proto::request_auth::Recipient {
        socket_identity_key: bitcoin::secp256k1::PublicKey::from_slice(&[
            0x02, 0x79, 0xbe, 0x66, 0x7e, 0xf9, 0xdc, 0xbb, 0xac, 0x55, 0xa0, 0x62, 0x95, 0xce,
            0x87, 0x0b, 0x07, 0x02, 0x9b, 0xfc, 0xdb, 0x2d, 0xce, 0x28, 0xd9, 0x59, 0xf2, 0x81,
            0x5b, 0x16, 0xf8, 0x17, 0x98,
        ])
        .expect("the generator is a key"),
        network: v1::Network::Regtest,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = v1::PayTransactionRequest::decode(data) {
        let _ = proto::request_auth::verify_request(&request, &socket());
    }
    if let Ok(request) = v1::PowerRequestRequest::decode(data) {
        let _ = proto::request_auth::verify_request(&request, &socket());
    }
});
