//! The cable's Lightning side (design.md `lightning`; BOLT 2/7/11 via ldk-node): a channel to the
//! socket, or to a hub with an announced channel to the socket, opened on first visit at the
//! policy's size and reused after; each quota paid as a checked BOLT11 invoice.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ln::ldk_node::bitcoin::secp256k1::PublicKey;
use ln::ldk_node::lightning::ln::msgs::SocketAddress;
use ln::ldk_node::lightning::routing::gossip::NodeId;
use ln::ldk_node::payment::PaymentStatus;
use ln::ldk_node::{Node, NodeError};
use serde::Deserialize;

/// `[lightning]` of the cable's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CableLightning {
    /// Size of a channel the cable opens (to a socket it has none with, or to the hub), in sat.
    #[serde(default = "default_channel")]
    pub channel_sat: u64,
    /// How long to wait for a new channel to become usable (its confirmations are mined by
    /// others), and for the hub's channel to the socket to be known, real seconds.
    #[serde(default = "default_channel_wait")]
    pub channel_wait_secs: u64,
    /// A hub, `<node id>@<host:port>`: sockets the cable has no channel with are paid through
    /// it (one channel to the hub serves every socket the hub has an announced channel to).
    /// Unset: the cable opens a channel to each socket it visits.
    #[serde(default)]
    pub hub: Option<LnPeer>,
    /// Pay a session's quotas after the first by keysend when the socket offers it: one round
    /// trip fewer per quota.
    #[serde(default = "default_keysend")]
    pub keysend: bool,
    /// The most channels the cable has at once, open or opening, to sockets and hubs
    /// together: a socket that would make it open one more (under a new node id each visit)
    /// is refused, and no coin is locked for it. (A socket that closes its channel after each
    /// visit is not bounded by this: the cable would open one again.)
    #[serde(default = "default_max_channels")]
    pub max_channels: usize,
}

fn default_max_channels() -> usize {
    8
}

fn default_keysend() -> bool {
    true
}

fn default_channel() -> u64 {
    100_000
}
fn default_channel_wait() -> u64 {
    120
}

impl Default for CableLightning {
    fn default() -> Self {
        CableLightning {
            channel_sat: default_channel(),
            channel_wait_secs: default_channel_wait(),
            hub: None,
            keysend: default_keysend(),
            max_channels: default_max_channels(),
        }
    }
}

/// A Lightning node and where to reach it, written `<node id hex>@<host:port>` (the usual
/// notation of Lightning peers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LnPeer {
    /// The node's public key (BOLT 8 checks it on connecting).
    pub node_id: PublicKey,
    /// Its listening address.
    pub address: SocketAddress,
}

impl FromStr for LnPeer {
    type Err = anyhow::Error;

    /// Parse `<node id hex>@<host:port>`; errors say which half is wrong.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (id, address) = s
            .split_once('@')
            .ok_or_else(|| anyhow::anyhow!("{s:?} is not <node id>@<host:port>"))?;
        let node_id = PublicKey::from_str(id).map_err(|e| {
            anyhow::anyhow!("{id:?} is not a node id (33-byte public key in hex): {e}")
        })?;
        let address = SocketAddress::from_str(address)
            .map_err(|_| anyhow::anyhow!("{address:?} is not host:port"))?;
        Ok(LnPeer { node_id, address })
    }
}

impl fmt::Display for LnPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node_id, self.address)
    }
}

impl<'de> Deserialize<'de> for LnPeer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(|e: anyhow::Error| serde::de::Error::custom(e))
    }
}

/// The socket's node id and address, from its offer. The offer's id is checked by the BOLT 8
/// handshake when connecting: a socket cannot claim another node's id.
pub fn peer_of(node_id: &[u8], address: &str) -> anyhow::Result<LnPeer> {
    let node_id = PublicKey::from_slice(node_id).context("the offer's Lightning node id")?;
    let address: SocketAddress = address.parse().map_err(|_| {
        anyhow::anyhow!("the offer's Lightning address {address:?} is not host:port")
    })?;
    Ok(LnPeer { node_id, address })
}

/// Make sure the cable can pay `amount_msat` to `socket`: over its own channel to the socket
/// if it has one; else, with a hub configured, over a channel to the hub once the hub's
/// announced channel to the socket is in the cable's graph (BOLT 7 gossip); else over a new
/// channel to the socket. Returns the funding txid of a channel opened now.
///
/// Errors: no funds for a channel, no usable channel or no route through the hub after
/// `settings.channel_wait_secs`.
pub fn ensure_route(
    ln: &Arc<Node>,
    socket: &LnPeer,
    amount_msat: u64,
    settings: &CableLightning,
) -> anyhow::Result<Option<String>> {
    let direct = ln
        .list_channels()
        .iter()
        .any(|c| c.counterparty_node_id == socket.node_id);
    let Some(hub) = settings.hub.as_ref().filter(|_| !direct) else {
        return ensure_channel(ln, socket, amount_msat, settings);
    };
    let opened = ensure_channel(ln, hub, amount_msat, settings)?;
    let deadline = Instant::now() + Duration::from_secs(settings.channel_wait_secs);
    let socket_id = NodeId::from_pubkey(&socket.node_id);
    let hub_id = NodeId::from_pubkey(&hub.node_id);
    loop {
        let graph = ln.network_graph();
        // A channel the router can use: announced, with the hub's enabled channel_update for
        // the direction hub -> socket (BOLT 7).
        let through_hub = graph.node(&socket_id).is_some_and(|info| {
            info.channels.iter().any(|scid| {
                graph.channel(*scid).is_some_and(|c| {
                    let hub_side = if c.node_one == hub_id && c.node_two == socket_id {
                        &c.one_to_two
                    } else if c.node_two == hub_id && c.node_one == socket_id {
                        &c.two_to_one
                    } else {
                        return false;
                    };
                    hub_side.as_ref().is_some_and(|update| update.enabled)
                })
            })
        });
        if through_hub {
            tracing::info!(hub = %hub.node_id, socket = %socket.node_id, "paying through the hub");
            return Ok(opened);
        }
        if Instant::now() > deadline {
            bail!(
                "the hub {} has no announced channel to the socket {} (none gossiped in {} s): the socket must get one, or remove `hub` from [lightning] to open a channel to the socket",
                hub.node_id,
                socket.node_id,
                settings.channel_wait_secs
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Make sure a usable channel to `to` can send `amount_msat`: connect, reuse a channel, wait
/// for one pending, or open one of `settings.channel_sat` (within `settings.max_channels`).
/// Returns the funding txid of a channel opened now.
fn ensure_channel(
    ln: &Arc<Node>,
    to: &LnPeer,
    amount_msat: u64,
    settings: &CableLightning,
) -> anyhow::Result<Option<String>> {
    let (peer, address) = (to.node_id, to.address.clone());
    ln.connect(peer, address.clone(), true)
        .with_context(|| format!("connecting to the Lightning node {to}"))?;
    let usable = |ln: &Node| {
        ln.list_channels().iter().any(|c| {
            c.counterparty_node_id == peer && c.is_usable && c.outbound_capacity_msat >= amount_msat
        })
    };
    if usable(ln) {
        return Ok(None);
    }
    let channels = ln.list_channels();
    let mut channels = channels.iter().filter(|c| c.counterparty_node_id == peer);
    // A channel is reported as opened now when it is, or when a run that stopped opened it
    // and it never became ready.
    let mut report_funding = channels.clone().any(|c| !c.is_channel_ready);
    if channels.next().is_none() {
        let held = ln.list_channels().len();
        if held >= settings.max_channels {
            bail!(
                "the cable has {held} Lightning channels, its policy's [lightning] max_channels: \
                 it opens none to {peer} (close one with `cable-node close-channel`, or pay \
                 through a hub)"
            );
        }
        // A node just started has not synced its on-chain wallet yet: a confirmed deposit
        // would read as nothing.
        ln.sync_wallets().context("syncing the Lightning wallet")?;
        let spendable = ln.list_balances().spendable_onchain_balance_sats;
        if spendable < settings.channel_sat {
            bail!(
                "the Lightning wallet holds {spendable} sat, a channel needs {}: fund it at `cable-node address --lightning`",
                settings.channel_sat
            );
        }
        ln.open_channel(peer, address, settings.channel_sat, None, None)
            .with_context(|| format!("opening a channel to {peer}"))?;
        tracing::info!(%peer, sat = settings.channel_sat, "Lightning channel opening");
        report_funding = true;
    }
    let deadline = Instant::now() + Duration::from_secs(settings.channel_wait_secs);
    loop {
        let _ = ln.sync_wallets();
        if usable(ln) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "no usable channel to {peer} after {} s",
                settings.channel_wait_secs
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    tracing::info!(%peer, "Lightning channel usable");
    let opened = report_funding
        .then(|| {
            ln.list_channels()
                .iter()
                .find(|c| c.counterparty_node_id == peer && c.is_usable)
                .and_then(|c| c.funding_txo)
                .map(|o| o.txid.to_string())
        })
        .flatten();
    Ok(opened)
}

/// Pay `invoice` and wait for the outcome. An invoice paid before (its payment id is its hash)
/// is not paid again: its outcome is awaited. Returns the fee paid in msat.
pub fn pay(
    ln: &Arc<Node>,
    events: &PaymentEvents,
    invoice: &ln::ldk_node::lightning_invoice::Bolt11Invoice,
    limit: Duration,
) -> Result<u64, LnPayError> {
    let payment_id = match send_when_routable(|| ln.bolt11_payment().send(invoice, None)) {
        Ok(id) => id,
        Err(NodeError::DuplicatePayment) => PaymentId(invoice.payment_hash().to_byte_array()),
        Err(e) => return Err(LnPayError::Failed(format!("paying the invoice: {e}"))),
    };
    await_payment(ln, events, payment_id, limit)
}

/// Keysend `amount_msat` to `payee` with the t2t session record as a custom TLV (the fast
/// path of design.md `lightning`), using `preimage`: a keysend sent again after a crash has the
/// same payment hash, so it is awaited, never paid twice. `auth` is the cable's signature of
/// the record and payment hash (`RequestSigner::sign_keysend`), sent as a second custom TLV:
/// a socket credits no keysend without it. Returns the fee paid in msat.
#[allow(clippy::too_many_arguments)]
pub fn keysend(
    ln: &Arc<Node>,
    events: &PaymentEvents,
    payee: PublicKey,
    amount_msat: u64,
    record: &proto::lightning::SessionRecord,
    auth: Vec<u8>,
    preimage: [u8; 32],
    limit: Duration,
) -> Result<u64, LnPayError> {
    let preimage = PaymentPreimage(preimage);
    let payment_id = match send_when_routable(|| {
        ln.spontaneous_payment().send_with_preimage_and_custom_tlvs(
            amount_msat,
            payee,
            vec![ln::session_tlv(record), ln::session_auth_tlv(auth.clone())],
            preimage,
            None,
        )
    }) {
        Ok(id) => id,
        Err(NodeError::DuplicatePayment) => PaymentId(PaymentHash::from(preimage).0),
        Err(e) => return Err(LnPayError::Failed(format!("keysend: {e}"))),
    };
    await_payment(ln, events, payment_id, limit)
}

/// How long a cooperative close waits for the peer to come online, and then to agree.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Close `channel` cooperatively (BOLT 2 `shutdown` / `closing_signed`): wait for the peer to
/// be connected and the channel re-established, start the close, and wait until the node has
/// dropped the channel (the closing transaction is broadcast). Errors when the peer stays
/// offline (then `--force` is the way) or does not agree in time.
pub fn close_cooperatively(
    ln: &Node,
    channel: &ln::ldk_node::ChannelDetails,
) -> anyhow::Result<()> {
    let id = channel.channel_id;
    let live = |ln: &Node| {
        ln.list_channels()
            .iter()
            .find(|c| c.channel_id == id)
            .map(|c| c.is_usable)
    };
    let deadline = Instant::now() + CLOSE_WAIT;
    while live(ln) == Some(false) {
        if Instant::now() > deadline {
            bail!(
                "the peer {} of {id} stayed offline: close with --force",
                channel.counterparty_node_id
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    ln.close_channel(&channel.user_channel_id, channel.counterparty_node_id)
        .with_context(|| format!("closing {id}"))?;
    while live(ln).is_some() {
        if Instant::now() > deadline {
            bail!("{id}: the peer did not complete the close in {CLOSE_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// How long a payment is tried again while the node finds no route: just after a start the
/// channels are being re-established and gossip is still arriving.
const ROUTE_WAIT: Duration = Duration::from_secs(10);

/// Run `send` again while it fails to start the payment (ldk-node's `PaymentSendingFailed`,
/// e.g. no route yet), for up to [`ROUTE_WAIT`]. A payment that failed to start was stored as
/// failed by ldk-node, so sending it again is not a second payment.
fn send_when_routable(
    send: impl Fn() -> Result<PaymentId, NodeError>,
) -> Result<PaymentId, NodeError> {
    let deadline = Instant::now() + ROUTE_WAIT;
    loop {
        match send() {
            Err(NodeError::PaymentSendingFailed) if Instant::now() < deadline => {
                tracing::debug!("no route yet; trying again");
                std::thread::sleep(Duration::from_millis(250));
            }
            outcome => return outcome,
        }
    }
}

/// Wakes whoever waits for a payment's outcome when the node reports one: the thread that
/// takes the node's events calls [`PaymentEvents::notify`] on `PaymentSuccessful` and
/// `PaymentFailed`, and [`await_payment`] sleeps until then instead of polling.
#[derive(Debug, Default)]
pub struct PaymentEvents {
    /// How many payment outcomes were reported so far.
    reported: Mutex<u64>,
    changed: Condvar,
}

impl PaymentEvents {
    /// A payment's outcome was reported: wake the waiters.
    pub fn notify(&self) {
        *self
            .reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// The count of outcomes reported so far.
    fn count(&self) -> u64 {
        *self
            .reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sleep until an outcome after the `seen`-th is reported, or `timeout` passes.
    fn wait_after(&self, seen: u64, timeout: Duration) {
        let guard = self
            .reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = self
            .changed
            .wait_timeout_while(guard, timeout, |reported| *reported == seen);
    }
}

/// Wait for a payment's outcome, woken by the node's payment events (checked once a second
/// as well, should an event have been taken elsewhere); the fee paid in msat.
/// How a Lightning payment did not succeed (design.md "Trust": a payment that times out may
/// still complete, so it is never taken as failed).
#[derive(Debug, thiserror::Error)]
pub enum LnPayError {
    /// It failed for good (LDK gave up, or it could not be sent): nothing was paid.
    #[error("{0}")]
    Failed(String),
    /// No outcome within the time allowed: it may still succeed. The cable keeps it pending
    /// (counted against the budget, awaited rather than paid again).
    #[error("the Lightning payment did not complete in {0:?}; it stays pending")]
    Pending(Duration),
}

fn await_payment(
    ln: &Node,
    events: &PaymentEvents,
    payment_id: PaymentId,
    limit: Duration,
) -> Result<u64, LnPayError> {
    let deadline = Instant::now() + limit;
    loop {
        let seen = events.count();
        match ln.payment(&payment_id).map(|p| (p.status, p.fee_paid_msat)) {
            Some((PaymentStatus::Succeeded, fee)) => return Ok(fee.unwrap_or(0)),
            Some((PaymentStatus::Failed, _)) => {
                return Err(LnPayError::Failed("the Lightning payment failed".into()))
            }
            _ => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LnPayError::Pending(limit));
        }
        events.wait_after(seen, left.min(Duration::from_secs(1)));
    }
}

use ln::ldk_node::bitcoin::hashes::Hash;
use ln::ldk_node::lightning::ln::channelmanager::PaymentId;
use ln::ldk_node::lightning_types::payment::{PaymentHash, PaymentPreimage};
