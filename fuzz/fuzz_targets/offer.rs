//! An offer from a stranger (socket.proto `GetOfferResponse`, `Offer`): decoded, its signature
//! checked, and its shape and every scheme's terms checked as the cable does. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = v1::GetOfferResponse::decode(data) {
        let _ = proto::identity::verify_offer(&response, "outlet-1", &[0; 32]);
    }
    if let Ok(offer) = v1::Offer::decode(data) {
        let _ = proto::terms::check_offer(&offer);
        let _ = proto::terms::offered_single_fee(&offer);
        let _ = proto::terms::offered_spillman(&offer);
        let _ = proto::terms::offered_lightning(&offer);
    }
});
