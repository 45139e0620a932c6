//! An exported session (`socket-node receipts`, the JSON `verify-receipts` reads): parsed and
//! checked whole. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(session) = serde_json::from_slice::<proto::receipt::SessionReceipts>(data) {
        let _ = proto::receipt::verify_session(&session);
    }
});
