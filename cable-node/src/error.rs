//! The cable's errors (design.md "Architecture v2"): why a session failed, by whose fault.

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum CableError {
    /// The cable refused the socket (its offer, terms, status or invoice broke a rule): nothing
    /// was paid for them.
    #[error("refused the socket: {0}")]
    CableRefusedSocket(String),
    /// The socket refused the cable (a payment or request) or locked it out.
    #[error("the socket refused: {0}")]
    SocketRefusedCable(String),
    /// The socket misbehaved (its count ran ahead of the cable's own meter beyond the
    /// tolerance, seed 000 §VII.B; a QuotaLow storm): the cable paid no more and flagged it in
    /// its registry of sockets.
    #[error("flagged the socket: {0}")]
    SocketFlagged(String),
    /// Anything else: wallet, chain, store, link.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}
