//! Limits on the cable-facing server (design.md "Trust"): the power-line link is a shared
//! medium, so one peer flooding it must not stop honest cables. Cheap checks come first:
//! connections are capped when accepted, in all and per host (IP address: a host opening many
//! connections is one peer); HTTP/2 streams per connection, message size, request time and
//! keepalive are set on the server ([`crate::config::LimitsConfig`]); requests per second are
//! limited per host before anything is decoded further, and per cable identity once its
//! signature is checked; `WatchStatus` streams are capped per host. Over a limit:
//! `RESOURCE_EXHAUSTED` (`ERROR_REASON_RATE_LIMITED`), nothing changed, no lockout.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bitcoin::secp256k1::PublicKey;
use futures_util::{Stream, StreamExt};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use crate::config::LimitsConfig;
use crate::error::SocketError;

/// Request rates per host and per cable identity (token buckets, `governor`), and the
/// `WatchStatus` streams each host holds.
pub struct RequestLimits {
    peers: DefaultKeyedRateLimiter<IpAddr>,
    identities: DefaultKeyedRateLimiter<PublicKey>,
    streams: Arc<HostCounts>,
    max_streams_per_host: usize,
}

/// How many of something (connections, streams) each host holds.
#[derive(Default)]
struct HostCounts(Mutex<HashMap<IpAddr, usize>>);

impl HostCounts {
    /// One more for `host`, unless it holds `max` already.
    fn take(self: &Arc<Self>, host: IpAddr, max: usize) -> Option<HostSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(host).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(HostSlot {
            counts: Arc::clone(self),
            host,
        })
    }
}

/// A host's place under a per-host limit, given back when dropped.
pub struct HostSlot {
    counts: Arc<HostCounts>,
    host: IpAddr,
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.host) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.host);
            }
        }
    }
}

/// Requests of its identity's rate that a refused `OpenChannel` costs a cable.
pub const REFUSAL_COST: NonZeroU32 = NonZeroU32::new(10).expect("not zero");

fn quota(per_sec: u32, burst: u32) -> Quota {
    let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_sec).allow_burst(NonZeroU32::new(burst).unwrap_or(per_sec))
}

impl RequestLimits {
    /// The limits of `config`.
    pub fn new(config: &LimitsConfig) -> Self {
        RequestLimits {
            peers: DefaultKeyedRateLimiter::keyed(quota(
                config.peer_requests_per_sec,
                config.peer_burst,
            )),
            identities: DefaultKeyedRateLimiter::keyed(quota(
                config.identity_requests_per_sec,
                config.identity_burst,
            )),
            streams: Arc::default(),
            max_streams_per_host: config.max_watch_streams_per_host,
        }
    }

    /// One more request from `peer`'s host (none known: not limited). Errors:
    /// [`SocketError::RateLimited`].
    pub fn check_peer(&self, peer: Option<SocketAddr>) -> Result<(), SocketError> {
        match peer {
            Some(peer) if self.peers.check_key(&peer.ip()).is_err() => {
                Err(SocketError::RateLimited(format!(
                    "too many requests from {}; slow down",
                    peer.ip()
                )))
            }
            _ => Ok(()),
        }
    }

    /// One more `WatchStatus` stream from `peer`'s host, held while the slot lives (none
    /// known: not limited). Errors: [`SocketError::RateLimited`] past
    /// `max_watch_streams_per_host`.
    pub fn watch_stream(&self, peer: Option<SocketAddr>) -> Result<Option<HostSlot>, SocketError> {
        let Some(peer) = peer else { return Ok(None) };
        self.streams
            .take(peer.ip(), self.max_streams_per_host)
            .map(Some)
            .ok_or_else(|| {
                SocketError::RateLimited(format!(
                    "{} holds {} status streams already; close one",
                    peer.ip(),
                    self.max_streams_per_host
                ))
            })
    }

    /// One more signed request of the cable `key`. Errors: [`SocketError::RateLimited`].
    pub fn check_identity(&self, key: &PublicKey) -> Result<(), SocketError> {
        self.identities.check_key(key).map_err(|_| {
            SocketError::RateLimited("too many requests from this cable identity; slow down".into())
        })
    }

    /// What a refused `OpenChannel` costs its cable identity: [`REFUSAL_COST`] requests of its
    /// rate (design.md "Trust": a refused OpenChannel counts against its identity).
    pub fn penalize(&self, key: &PublicKey) {
        let _ = self.identities.check_key_n(key, REFUSAL_COST);
    }

    /// Forget peers and identities quiet for long (call now and then: memory stays bounded).
    pub fn forget_idle(&self) {
        self.peers.retain_recent();
        self.identities.retain_recent();
    }
}

/// The accepted connections of `incoming`, at most `max` open at once and `max_per_host` from
/// one IP address: one more is closed as soon as accepted (logged), so a flood of connections
/// cannot queue up, and one host cannot take every place.
pub fn limit_connections(
    incoming: TcpIncoming,
    max: usize,
    max_per_host: usize,
) -> impl Stream<Item = io::Result<LimitedStream>> {
    let permits = Arc::new(Semaphore::new(max));
    let hosts = Arc::new(HostCounts::default());
    incoming.filter_map(move |accepted| {
        let (permits, hosts) = (Arc::clone(&permits), Arc::clone(&hosts));
        async move {
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) => return Some(Err(e)),
            };
            let peer = stream.peer_addr().ok();
            let host = match peer {
                Some(peer) => match hosts.take(peer.ip(), max_per_host) {
                    Some(slot) => Some(slot),
                    None => {
                        tracing::warn!(
                            ?peer,
                            max_per_host,
                            "connection refused: its host is at its connection limit"
                        );
                        return None;
                    }
                },
                None => None,
            };
            match permits.try_acquire_owned() {
                Ok(permit) => Some(Ok(LimitedStream {
                    stream,
                    _permit: permit,
                    _host: host,
                })),
                Err(_) => {
                    tracing::warn!(?peer, max, "connection refused: at the connection limit");
                    None
                }
            }
        }
    })
}

/// An accepted connection holding its place under the connection limits until it closes.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    _host: Option<HostSlot>,
}

impl Connected for LimitedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_or_identity_past_its_burst_is_limited_and_others_are_not() {
        let limits = RequestLimits::new(&LimitsConfig {
            peer_requests_per_sec: 1,
            peer_burst: 3,
            identity_requests_per_sec: 1,
            identity_burst: 2,
            ..LimitsConfig::default()
        });
        let flooder: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let flooders_other_connection: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        let honest: SocketAddr = "127.0.0.2:4001".parse().unwrap();
        for _ in 0..3 {
            limits.check_peer(Some(flooder)).unwrap();
        }
        assert!(matches!(
            limits.check_peer(Some(flooder)),
            Err(SocketError::RateLimited(_))
        ));
        // A new connection of the same host is the same peer.
        assert!(matches!(
            limits.check_peer(Some(flooders_other_connection)),
            Err(SocketError::RateLimited(_))
        ));
        limits.check_peer(Some(honest)).unwrap();
        limits.check_peer(None).unwrap();
        let secp = bitcoin::secp256k1::Secp256k1::signing_only();
        let key = |b: u8| {
            bitcoin::secp256k1::SecretKey::from_slice(&[b; 32])
                .unwrap()
                .public_key(&secp)
        };
        limits.check_identity(&key(1)).unwrap();
        limits.check_identity(&key(1)).unwrap();
        assert!(limits.check_identity(&key(1)).is_err());
        limits.check_identity(&key(2)).unwrap();
    }

    #[test]
    fn a_host_holds_at_most_its_streams_and_gets_them_back_when_they_close() {
        let limits = RequestLimits::new(&LimitsConfig {
            max_watch_streams_per_host: 2,
            ..LimitsConfig::default()
        });
        let host: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let same_host: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let first = limits.watch_stream(Some(host)).unwrap();
        let _second = limits.watch_stream(Some(same_host)).unwrap();
        assert!(limits.watch_stream(Some(host)).is_err());
        let _theirs = limits.watch_stream(Some(other)).unwrap();
        drop(first);
        let _again = limits.watch_stream(Some(same_host)).unwrap();
        assert!(limits.watch_stream(None).unwrap().is_none());
    }
}
