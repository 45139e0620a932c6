//! A signed request from a stranger (`RequestAuth` on `PayTransaction` and `PowerRequest`):
//! decoded and its signature checked as the socket does first. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = v1::PayTransactionRequest::decode(data) {
        let _ = proto::identity::verify_request(&request);
    }
    if let Ok(request) = v1::PowerRequestRequest::decode(data) {
        let _ = proto::identity::verify_request(&request);
    }
});
