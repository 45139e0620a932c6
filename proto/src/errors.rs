//! Error statuses with a machine-readable reason (the `ErrorReason` enum of `socket.proto`):
//! a `google.rpc.ErrorInfo` with domain [`ERROR_DOMAIN`] and reason = the value's name, in the
//! status details. Built by the socket here and read by the cable (or any client) here.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::v1::ErrorReason;

/// The `ErrorInfo.domain` of t2t errors.
pub const ERROR_DOMAIN: &str = "t2t.v1";

/// A status of `code` with `message` for people and `reason` in its details.
pub fn status(code: Code, reason: ErrorReason, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, HashMap::new()),
    )
}

/// The reason a status carries, if it has a t2t `ErrorInfo` with a known reason.
pub fn reason_of(status: &Status) -> Option<ErrorReason> {
    let details = status.get_error_details();
    let info = details.error_info()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    ErrorReason::from_str_name(&info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `proto/testvectors/error_status.json`: the exact `grpc-status-details-bin` bytes (a
    /// `google.rpc.Status` holding one `google.rpc.ErrorInfo`) of an error status, for
    /// implementers in other languages.
    #[test]
    fn the_error_test_vector_holds() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../testvectors/error_status.json")).unwrap();
        for vector in vectors["vectors"].as_array().unwrap() {
            let reason = ErrorReason::from_str_name(vector["reason"].as_str().unwrap()).unwrap();
            let code = Code::from_i32(vector["code"].as_i64().unwrap() as i32);
            let message = vector["message"].as_str().unwrap();
            let sent = status(code, reason, message);
            let details_hex: String = sent.details().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                details_hex,
                vector["details_hex"].as_str().unwrap(),
                "{vector}"
            );
            let bytes: Vec<u8> = (0..details_hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&details_hex[i..i + 2], 16).unwrap())
                .collect();
            let received = Status::with_details(code, message, bytes.into());
            assert_eq!(reason_of(&received), Some(reason));
        }
    }

    #[test]
    fn a_reason_survives_the_status_details() {
        let sent = status(
            Code::FailedPrecondition,
            ErrorReason::InputSetClosed,
            "the input set of these terms is closed",
        );
        assert_eq!(sent.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&sent), Some(ErrorReason::InputSetClosed));
        // Only code, message and the encoded details cross the wire.
        let received =
            Status::with_details(sent.code(), sent.message(), sent.details().to_vec().into());
        assert_eq!(reason_of(&received), Some(ErrorReason::InputSetClosed));
        assert_eq!(reason_of(&Status::unavailable("plain")), None);
    }
}
