//! The chain side of spillman channels (seed 003 steps 16-17, "Protocol Peculiarities";
//! design.md "Trust", "Blame needs proof"): each channel's deposit and close watched until
//! final, deposits sent again at start, and every channel closed when due (its session ended,
//! or its refund about to unlock). Run by the settler thread.

use bitcoin::hex::DisplayHex;
use bitcoin::{OutPoint, Transaction};
use wallet::facts::{Answer, Fate, Spender, SEARCH_DEPTH_BLOCKS as DEPOSIT_SEARCH_BLOCKS};

use super::channel_secret_of;
use crate::shared::Shared;
use crate::store::{ChannelStatus, Lost, StoredChannel};

/// The chain watch of spillman channels (design.md "Trust"; seed 003), with the chain's one
/// reading of a transaction ([`wallet::facts::Fate`]): a deposit or close missing from the
/// mempool (evicted, or its parent was) is sent again; a deposit replaced by a named
/// transaction (the cable double-spent it before it confirmed) loses what was credited on it:
/// recorded, the cable banned (design.md "Blame needs proof"); a close is followed until it
/// confirms, and one replaced (the deposit spent by the refund once it unlocked: the socket
/// closed too late) is audited, blaming nobody. bitcoind unanswered: try again next time.
pub(crate) fn watch_channels(node: &Shared) {
    let channels = match node.store().unsettled_channels() {
        Ok(channels) => channels,
        Err(e) => return tracing::error!("reading the channels: {e}"),
    };
    let chain = &node.chain;
    let depth = node.config.final_confirmations.max(1) + DEPOSIT_SEARCH_BLOCKS;
    for stored in channels {
        let session_id = stored.session_id.as_str();
        let outlet_id = node
            .store()
            .session_outlet(session_id)
            .ok()
            .flatten()
            .unwrap_or_default();
        let resend = |tx: &Transaction| match chain.broadcast(tx) {
            Ok(txid) => tracing::info!(%txid, "sent again: it had left the mempool unconfirmed"),
            Err(e) => tracing::debug!(txid = %tx.compute_txid(), "sending again: {e}"),
        };
        if let Some(deposit) = &stored.deposit {
            match chain.fate(deposit, depth) {
                Answer::Found(Fate::Replaced { input, by }) => {
                    node.payment_lost(
                        &outlet_id,
                        session_id,
                        Lost::Channel,
                        stored.highest_total,
                        "channel-lost",
                        &format!(
                            "the deposit {} was replaced: its input {input} was spent by {by}",
                            deposit.compute_txid()
                        ),
                    );
                    continue;
                }
                Answer::Found(Fate::Missing) => {
                    match crate::parents::why_missing(node, deposit, depth) {
                        crate::parents::Missing::ParentReplaced { parent, input, by } => {
                            node.payment_lost_unproven(
                                &outlet_id,
                                session_id,
                                Lost::Channel,
                                stored.highest_total,
                                &format!(
                                    "the deposit {} can never confirm: its parent {parent} was \
                                 replaced (its input {input} spent by {by})",
                                    deposit.compute_txid()
                                ),
                            );
                            continue;
                        }
                        crate::parents::Missing::SendAgain => resend(deposit),
                    }
                }
                Answer::Found(Fate::Confirmed { .. } | Fate::InMempool) => {}
                Answer::NotFound | Answer::NoAnswer(_) | Answer::Refused(_) => return,
            }
        }
        let Some(close) = &stored.close else { continue };
        match chain.fate(close, depth) {
            Answer::Found(Fate::Confirmed { height, .. }) => {
                tracing::info!(session = %session_id, height, "spillman close confirmed");
                if let Err(e) = node.store().close_confirmed(session_id, height) {
                    tracing::error!("store (written again on the next round): {e}");
                }
            }
            Answer::Found(Fate::Missing) => resend(close),
            Answer::Found(Fate::InMempool) => {}
            Answer::Found(Fate::Replaced { by, .. }) => {
                tracing::warn!(session = %session_id, %by, "the channel's close was replaced (the refund, after it unlocked?)");
                if let Err(e) = node.store().audit(
                    &outlet_id,
                    Some(session_id),
                    "channel-close-replaced",
                    &format!("{} replaced by {by}", close.compute_txid()),
                ) {
                    tracing::error!("the audit log did not take a row: {e}");
                }
                if let Err(e) = node.store().close_confirmed(session_id, 0) {
                    tracing::error!("store (written again on the next round): {e}");
                }
            }
            Answer::NotFound | Answer::NoAnswer(_) | Answer::Refused(_) => return,
        }
    }
}

/// What the chain says of a channel's deposit output.
pub(super) enum DepositState {
    /// Unspent (in the mempool or confirmed).
    Unspent(wallet::facts::Utxo),
    /// Spent by this transaction (a close or the refund: both need the socket's signature).
    Spent(bitcoin::Txid),
    /// The deposit transaction itself replaced: its `input` spent by `by`.
    Replaced { input: OutPoint, by: bitcoin::Txid },
    /// Neither there nor replaced (evicted, or its parent was).
    Missing,
}

/// The state of the deposit output `outpoint` of `deposit` (the stored deposit transaction,
/// when handed over), looking `depth` blocks back. Blocking (bitcoind RPC).
pub(super) fn deposit_state(
    shared: &Shared,
    outpoint: OutPoint,
    deposit: Option<&Transaction>,
    depth: u32,
) -> Answer<DepositState> {
    let chain = &shared.chain;
    match chain.utxo(outpoint) {
        Answer::Found(utxo) => return Answer::Found(DepositState::Unspent(utxo)),
        Answer::NotFound => {}
        Answer::NoAnswer(e) => return Answer::NoAnswer(e),
        Answer::Refused(e) => return Answer::Refused(e),
    }
    match chain.spender(outpoint, depth) {
        Answer::Found(Spender::Tx { txid, .. }) => return Answer::Found(DepositState::Spent(txid)),
        Answer::Found(Spender::Unspent) | Answer::NotFound => {}
        Answer::NoAnswer(e) => return Answer::NoAnswer(e),
        Answer::Refused(e) => return Answer::Refused(e),
    }
    let Some(deposit) = deposit else {
        return Answer::Found(DepositState::Missing);
    };
    match chain.fate(deposit, depth) {
        Answer::Found(Fate::Replaced { input, by }) => {
            Answer::Found(DepositState::Replaced { input, by })
        }
        Answer::Found(_) | Answer::NotFound => Answer::Found(DepositState::Missing),
        Answer::NoAnswer(e) => Answer::NoAnswer(e),
        Answer::Refused(e) => Answer::Refused(e),
    }
}

/// Why a channel's close was refused, when the chain tells: the deposit replaced, or its
/// output spent by another transaction than the close (the refund).
pub(super) fn closing_failed_because(
    node: &Shared,
    stored: &StoredChannel,
) -> Option<DepositState> {
    let depth = node.config.final_confirmations.max(1) + DEPOSIT_SEARCH_BLOCKS;
    let close = stored.close.as_ref().map(|c| c.compute_txid());
    match deposit_state(node, stored.channel.deposit, stored.deposit.as_ref(), depth) {
        Answer::Found(DepositState::Spent(by)) if Some(by) == close => None,
        Answer::Found(state @ (DepositState::Replaced { .. } | DepositState::Spent(_))) => {
            Some(state)
        }
        _ => None,
    }
}

/// At start-up: broadcast the deposit of every open channel again (a socket stopped between
/// storing a deposit and broadcasting it; bitcoind ignores one it has).
pub(crate) fn rebroadcast_deposits(shared: &Shared) {
    let open = shared.store().open_channels().unwrap_or_default();
    for (stored, _) in open {
        if let Some(deposit) = &stored.deposit {
            match shared.chain.broadcast(deposit) {
                Ok(txid) => {
                    tracing::info!(session = %stored.session_id, %txid, "deposit broadcast again")
                }
                Err(e) => {
                    tracing::warn!(session = %stored.session_id, "deposit not broadcast again: {e}")
                }
            }
        }
    }
}

/// Step 16 and the peculiarity that makes it safe: close every open channel whose session
/// ended or whose refund unlocks within `close_margin_blocks`, by co-signing its highest
/// payment and broadcasting it. A channel with no payment is left to the cable's refund.
/// The margin is that of the channel's outlet. Errors are logged; the next call tries again.
/// Blocking (bitcoind RPC): run on the settler thread.
pub(crate) fn close_due(node: &Shared) {
    let open = match node.store().open_channels() {
        Ok(open) => open,
        Err(e) => return tracing::error!("reading the channels: {e}"),
    };
    if open.is_empty() {
        return;
    }
    let tip = match node.chain.height() {
        Ok(tip) => tip,
        Err(e) => return tracing::warn!("cannot see the chain to close channels: {e}"),
    };
    for (stored, session_ended) in open {
        let session_id = &stored.session_id;
        let outlet_id = &node
            .store()
            .session_outlet(session_id)
            .ok()
            .flatten()
            .unwrap_or_default();
        // An outlet removed from the config: close with the strictest margin it could have had.
        let margin = node
            .config
            .outlets
            .iter()
            .find(|o| o.id == *outlet_id)
            .map_or(u32::MAX, |o| o.spillman.close_margin_blocks);
        let expiring = tip.saturating_add(margin) >= stored.channel.refund_lock_height;
        if !session_ended && !expiring {
            continue;
        }
        let Some((tx, cable_signature)) = &stored.highest else {
            if let Err(e) = node
                .store()
                .close_channel(session_id, ChannelStatus::Unpaid, None)
            {
                tracing::error!("store (written again on the next round): {e}");
            }
            if let Err(e) = node.store().audit(
                outlet_id,
                Some(session_id),
                "channel-unpaid",
                "no payment to close with",
            ) {
                tracing::error!("the audit log did not take a row: {e}");
            }
            continue;
        };
        let Some(secret) = channel_secret_of(node, session_id, &stored.channel.socket_key) else {
            tracing::error!(session = %session_id, "no key of ours is the channel's socket key");
            continue;
        };
        let closed = stored
            .channel
            .sign(tx, &secret)
            .and_then(|ours| stored.channel.finalize(tx, *cable_signature, ours))
            .map_err(|e| e.to_string())
            .and_then(|signed| {
                let txid = node.chain.broadcast(&signed).map_err(|e| e.to_string())?;
                Ok((txid, signed))
            });
        match closed {
            Ok((txid, signed)) => {
                tracing::info!(session = %session_id, %txid, total = %stored.highest_total, expiring, "spillman channel closed");
                let _ =
                    node.store()
                        .close_channel(session_id, ChannelStatus::Closed, Some(&signed));
                if let Err(e) = node.store().audit(
                    outlet_id,
                    Some(session_id),
                    "channel-closed",
                    &format!("{txid} pays {}", stored.highest_total),
                ) {
                    tracing::error!("the audit log did not take a row: {e}");
                }
            }
            // Lost, and blamed, only when the deposit itself was replaced by a named
            // transaction (the cable double-spent it before it confirmed). A spend of the
            // deposit's output is a close or the refund, both signed by the socket: the cable
            // took its refund because the socket closed too late; nobody is blamed (design.md
            // "Blame needs proof"). A deposit merely gone (evicted) is sent again by the watch.
            Err(e) => match closing_failed_because(node, &stored) {
                Some(DepositState::Replaced { input, by }) => {
                    tracing::error!(session = %session_id, %by, "the deposit was double-spent, nothing to close with: {e}");
                    node.payment_lost(
                        outlet_id,
                        session_id,
                        Lost::Channel,
                        stored.highest_total,
                        "channel-lost",
                        &format!(
                            "the deposit {} was replaced: its input {input} was spent by {by}: {e}",
                            stored.channel.deposit
                        ),
                    );
                }
                Some(DepositState::Spent(by)) => {
                    tracing::warn!(session = %session_id, %by, "the deposit was spent (the refund, after it unlocked?): not closed");
                    if let Err(e) = node.store().audit(
                        outlet_id,
                        Some(session_id),
                        "channel-refunded",
                        &format!(
                            "deposit {} spent by {by} before the socket closed",
                            stored.channel.deposit
                        ),
                    ) {
                        tracing::error!("the audit log did not take a row: {e}");
                    }
                    if let Err(e) =
                        node.store()
                            .close_channel(session_id, ChannelStatus::Unpaid, None)
                    {
                        tracing::error!("store (written again on the next round): {e}");
                    }
                }
                _ => {
                    tracing::error!(session = %session_id, "closing the channel: {e}");
                    if let Err(e) = node.store().audit(
                        outlet_id,
                        Some(session_id),
                        "channel-close-failed",
                        &format!(
                            "{e}; signature {}",
                            cable_signature.to_vec().to_lower_hex_string()
                        ),
                    ) {
                        tracing::error!("the audit log did not take a row: {e}");
                    }
                }
            },
        }
    }
}
