//! The cable's Lightning side (design.md `lightning`; BOLT 2/11 via ldk-node): a channel to the
//! socket, opened on first visit at the policy's size and reused after; each quota paid as a
//! checked BOLT11 invoice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ln::ldk_node::bitcoin::secp256k1::PublicKey;
use ln::ldk_node::lightning::ln::msgs::SocketAddress;
use ln::ldk_node::payment::PaymentStatus;
use ln::ldk_node::{Node, NodeError};
use serde::Deserialize;

/// `[lightning]` of the cable's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CableLightning {
    /// Size of a channel the cable opens to a socket it has none with, in sat.
    #[serde(default = "default_channel")]
    pub channel_sat: u64,
    /// How long to wait for a new channel to become usable (its confirmations are mined by
    /// others), real seconds.
    #[serde(default = "default_channel_wait")]
    pub channel_wait_secs: u64,
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
        }
    }
}

/// The socket's node id and address, from its offer. The offer's id is checked by the BOLT 8
/// handshake when connecting: a socket cannot claim another node's id.
pub fn peer_of(node_id: &[u8], address: &str) -> anyhow::Result<(PublicKey, SocketAddress)> {
    let node_id = PublicKey::from_slice(node_id).context("the offer's Lightning node id")?;
    let address: SocketAddress = address.parse().map_err(|_| {
        anyhow::anyhow!("the offer's Lightning address {address:?} is not host:port")
    })?;
    Ok((node_id, address))
}

/// Make sure a usable channel to `peer` can send `amount_msat`: connect, reuse a channel, wait
/// for one pending, or open one of `settings.channel_sat`. Returns the funding txid of a channel
/// opened now.
pub fn ensure_channel(
    ln: &Arc<Node>,
    peer: PublicKey,
    address: SocketAddress,
    amount_msat: u64,
    settings: &CableLightning,
) -> anyhow::Result<Option<String>> {
    ln.connect(peer, address.clone(), true).with_context(|| {
        format!("connecting to the socket's Lightning node {peer} at {address}")
    })?;
    let usable = |ln: &Node| {
        ln.list_channels().iter().any(|c| {
            c.counterparty_node_id == peer && c.is_usable && c.outbound_capacity_msat >= amount_msat
        })
    };
    if usable(ln) {
        return Ok(None);
    }
    let mut opened = None;
    if !ln
        .list_channels()
        .iter()
        .any(|c| c.counterparty_node_id == peer)
    {
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
            .context("opening a channel to the socket")?;
        tracing::info!(%peer, sat = settings.channel_sat, "Lightning channel opening");
    }
    let deadline = Instant::now() + Duration::from_secs(settings.channel_wait_secs);
    loop {
        let _ = ln.sync_wallets();
        if usable(ln) {
            break;
        }
        if opened.is_none() {
            opened = ln
                .list_channels()
                .iter()
                .find(|c| c.counterparty_node_id == peer)
                .and_then(|c| c.funding_txo)
                .map(|o| o.txid.to_string());
        }
        if Instant::now() > deadline {
            bail!(
                "no usable channel to the socket after {} s",
                settings.channel_wait_secs
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    tracing::info!(%peer, "Lightning channel usable");
    Ok(opened)
}

/// Pay `invoice` and wait for the outcome. An invoice paid before (its payment id is its hash)
/// is not paid again: its outcome is awaited. Returns the fee paid in msat.
pub fn pay(
    ln: &Arc<Node>,
    invoice: &ln::ldk_node::lightning_invoice::Bolt11Invoice,
    limit: Duration,
) -> anyhow::Result<u64> {
    let payment_id = match ln.bolt11_payment().send(invoice, None) {
        Ok(id) => id,
        Err(NodeError::DuplicatePayment) => ln::ldk_node::lightning::ln::channelmanager::PaymentId(
            invoice.payment_hash().to_byte_array(),
        ),
        Err(e) => bail!("paying the invoice: {e}"),
    };
    let deadline = Instant::now() + limit;
    loop {
        match ln.payment(&payment_id).map(|p| (p.status, p.fee_paid_msat)) {
            Some((PaymentStatus::Succeeded, fee)) => return Ok(fee.unwrap_or(0)),
            Some((PaymentStatus::Failed, _)) => bail!("the Lightning payment failed"),
            _ if Instant::now() > deadline => {
                bail!("the Lightning payment did not complete in {limit:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

use ln::ldk_node::bitcoin::hashes::Hash;
