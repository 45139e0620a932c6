//! The socket's errors (design.md "Architecture v2"): what a request can fail with, inside the
//! node. They become a `tonic::Status` only at the gRPC edge, with the reason code of
//! `socket.proto`'s `ErrorReason` in the status details ([`proto::errors`]).

use proto::v1::ErrorReason;
use tonic::{Code, Status};

/// Why a request to the socket failed. Each message is for people; the variant is the reason
/// a client acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocketError {
    /// The session's own payment or deposit broke a protocol rule: the outlet locked out.
    /// `PERMISSION_DENIED`, `ERROR_REASON_REFUSED_LOCKOUT`.
    #[error("payment refused, outlet locked out: {0}")]
    Cheat(String),
    /// Malformed, or asks for what the outlet does not offer; nothing changed.
    /// `INVALID_ARGUMENT`, `ERROR_REASON_INVALID_REQUEST`.
    #[error("{0}")]
    Invalid(String),
    /// spillman: the proposed channel breaks the terms; nothing was signed.
    /// `INVALID_ARGUMENT`, `ERROR_REASON_CHANNEL_REFUSED`.
    #[error("channel refused: {0}")]
    ChannelRefused(String),
    /// No such outlet or session. `NOT_FOUND`, `ERROR_REASON_NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// The outlet or session is not in a state to take the request; nothing changed.
    /// `FAILED_PRECONDITION`, `ERROR_REASON_WRONG_STATE`.
    #[error("{0}")]
    WrongState(String),
    /// single-fee: the input set of these terms closed; ask for new terms.
    /// `FAILED_PRECONDITION`, `ERROR_REASON_INPUT_SET_CLOSED`.
    #[error("{0}")]
    InputSetClosed(String),
    /// Cannot check now (bitcoind, confirmations, the outlet stopping); retry.
    /// `UNAVAILABLE`, `ERROR_REASON_UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// Another payment of the session is being checked; retry.
    /// `UNAVAILABLE`, `ERROR_REASON_PAYMENT_IN_FLIGHT`.
    #[error("{0}")]
    PaymentInFlight(String),
    /// Our own fault (the store). `INTERNAL`, `ERROR_REASON_INTERNAL`.
    #[error("{0}")]
    Internal(String),
    /// A request changing a session without a valid signature of the session's cable, or a
    /// replayed one; nothing changed, no lockout. `UNAUTHENTICATED`,
    /// `ERROR_REASON_UNAUTHENTICATED`.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The cable identity opening a session is banned: it made the socket lose a payment.
    /// Nothing changed, no lockout. `PERMISSION_DENIED`, `ERROR_REASON_CABLE_BANNED`.
    #[error("cable banned: {0}")]
    Banned(String),
    /// Too many requests from one peer or cable identity ([`crate::limits`]); nothing changed.
    /// `RESOURCE_EXHAUSTED`, `ERROR_REASON_RATE_LIMITED`.
    #[error("rate limited: {0}")]
    RateLimited(String),
}

impl SocketError {
    /// A [`SocketError::WrongState`].
    pub fn wrong_state(message: impl Into<String>) -> Self {
        SocketError::WrongState(message.into())
    }

    /// A [`SocketError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        SocketError::Invalid(message.into())
    }

    /// A [`SocketError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        SocketError::NotFound(message.into())
    }

    /// A [`SocketError::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        SocketError::Unavailable(message.into())
    }

    /// A [`SocketError::Internal`] from any error of ours.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        SocketError::Internal(e.to_string())
    }

    /// The gRPC code and the reason code of `socket.proto`.
    pub fn code_and_reason(&self) -> (Code, ErrorReason) {
        match self {
            SocketError::Cheat(_) => (Code::PermissionDenied, ErrorReason::RefusedLockout),
            SocketError::Invalid(_) => (Code::InvalidArgument, ErrorReason::InvalidRequest),
            SocketError::ChannelRefused(_) => (Code::InvalidArgument, ErrorReason::ChannelRefused),
            SocketError::NotFound(_) => (Code::NotFound, ErrorReason::NotFound),
            SocketError::WrongState(_) => (Code::FailedPrecondition, ErrorReason::WrongState),
            SocketError::InputSetClosed(_) => {
                (Code::FailedPrecondition, ErrorReason::InputSetClosed)
            }
            SocketError::Unavailable(_) => (Code::Unavailable, ErrorReason::Unavailable),
            SocketError::PaymentInFlight(_) => (Code::Unavailable, ErrorReason::PaymentInFlight),
            SocketError::Internal(_) => (Code::Internal, ErrorReason::Internal),
            SocketError::Unauthenticated(_) => {
                (Code::Unauthenticated, ErrorReason::Unauthenticated)
            }
            SocketError::Banned(_) => (Code::PermissionDenied, ErrorReason::CableBanned),
            SocketError::RateLimited(_) => (Code::ResourceExhausted, ErrorReason::RateLimited),
        }
    }
}

impl From<SocketError> for Status {
    fn from(error: SocketError) -> Self {
        let (code, reason) = error.code_and_reason();
        crate::metrics::METRICS.refused(reason);
        proto::errors::status(code, reason, error.to_string())
    }
}

/// tonic answers a request whose bytes do not decode as its message with `INTERNAL` ("failed
/// to decode Protobuf message"), which tells a cable to retry the same bytes: rewrite that
/// answer to `INVALID_ARGUMENT` with `ERROR_REASON_INVALID_REQUEST` in its `ErrorInfo`
/// (socket.proto), as every other malformed request gets. Other responses pass unchanged.
pub fn undecodable_is_invalid<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != Code::Internal || !status.message().starts_with("failed to decode") {
        return response;
    }
    let invalid = proto::errors::status(
        Code::InvalidArgument,
        ErrorReason::InvalidRequest,
        format!("the request does not decode: {}", status.message()),
    );
    let headers = response.headers_mut();
    headers.remove("grpc-status-details-bin");
    if invalid.add_header(headers).is_err() {
        tracing::warn!("an undecodable request's answer could not be rewritten");
    }
    response
}
