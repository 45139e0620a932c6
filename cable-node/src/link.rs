//! The cable's link to its socket (design.md "Architecture v3"): the gRPC channel over the
//! power-line link, kept alive with HTTP/2 pings, and one retry policy for reaching the socket
//! again (every 250 ms until `session.reconnect_secs` have passed).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::v1::socket_client::SocketClient;
use proto::v1::{self};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::signer::RequestSigner;

/// How long the link waits between two attempts to reach the socket.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// The socket's gRPC endpoint and how long to keep trying to reach it.
pub struct Link {
    /// The socket's URL (`socket` in the config), e.g. `http://127.0.0.1:50051`.
    socket: String,
    /// How long a lost link is tried again before the session gives up.
    reconnect: Duration,
}

/// Whether a failed call may be sent again as it was: the socket did not take it for a
/// reason that is nobody's fault (socket.proto `ErrorReason`).
pub fn retryable(status: &tonic::Status) -> bool {
    // RESOURCE_EXHAUSTED: over the socket's request rate; changes nothing, so resend later.
    // INTERNAL: the socket's own trouble (its store failed a write): nothing was credited, and
    // every request is answered the same when sent again (socket.proto `ErrorReason`).
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Internal
    )
}

impl Link {
    /// The link to `socket` (a URL), tried again for `reconnect` when lost.
    pub fn new(socket: String, reconnect: Duration) -> Self {
        Link { socket, reconnect }
    }

    /// Connect once. Errors: a bad URL, or no socket answers within 5 s.
    pub async fn connect(&self) -> anyhow::Result<SocketClient<Channel>> {
        // A link that drops without a word (a power-line link) leaves TCP retrying for many
        // seconds: HTTP/2 pings find it dead within ~10 s, and the cable reconnects and
        // resumes its session within the socket's grace period.
        let channel = tonic::transport::Endpoint::from_shared(self.socket.clone())
            .with_context(|| format!("the socket's address {}", self.socket))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .with_context(|| format!("no socket answers at {}", self.socket))?;
        Ok(SocketClient::new(channel))
    }
    /// Reach the socket again and reopen the link (a `WatchStatus` of `outlet_id` signed by
    /// `signer` for `to`), until `reconnect` has passed. Errors: the last attempt's.
    pub async fn reconnect(
        &self,
        signer: &RequestSigner,
        to: &proto::request_auth::Recipient,
        outlet_id: &str,
    ) -> anyhow::Result<(SocketClient<Channel>, Streaming<v1::WatchStatusResponse>)> {
        let pair = self
            .retry(|| async {
                let mut client = self.connect().await?;
                let request = v1::WatchStatusRequest {
                    outlet_id: outlet_id.to_owned(),
                    auth: None,
                };
                let stream = client
                    .watch_status(signer.sign(to, request))
                    .await?
                    .into_inner();
                anyhow::Ok((client, stream))
            })
            .await?;
        tracing::info!("link to the socket restored");
        Ok(pair)
    }
    /// A new connection to the socket for calls, retried until `reconnect_secs` have passed,
    /// without a new `WatchStatus` stream: the link stays the stream the session loop reads
    /// (the socket counts the cable's newest signed stream as its presence, so a second one
    /// opened and dropped here would read as the cable leaving).
    pub async fn reconnect_client(&self) -> anyhow::Result<SocketClient<Channel>> {
        self.retry(|| self.connect()).await
    }

    /// `attempt` until it succeeds or `reconnect` has passed, every [`RETRY_EVERY`].
    async fn retry<T, F, Fut>(&self, mut attempt: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let deadline = Instant::now() + self.reconnect;
        loop {
            match attempt().await {
                Ok(done) => return Ok(done),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("socket unreachable, retrying: {e:#}");
                    tokio::time::sleep(RETRY_EVERY).await;
                }
                Err(e) => return Err(e.context("the socket stayed unreachable")),
            }
        }
    }
}
