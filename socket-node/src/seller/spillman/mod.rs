//! Seller side of the `spillman` scheme (seed 003 "Micropayment Channel Protocol" steps 4–17,
//! "Protocol Peculiarities"; design.md): the socket signs the refund of a channel before it sees
//! the deposit, checks and broadcasts the deposit, holds the highest payment (persisted before
//! the quota is credited), and closes the channel by co-signing and broadcasting it when the
//! session ends, and at the latest `close_margin_blocks` before the refund unlocks — also when
//! the cable is gone and after a restart ([`close_due`], run by the settler thread).

use crate::error::SocketError;
use bitcoin::consensus::encode;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, OutPoint, PublicKey, ScriptBuf, Transaction};
use proto::spillman::Channel;
use proto::v1;

use super::{Credit, Issued, Refusal, Seller, SellerContext, Verdict};
use crate::config::OutletConfig;
use crate::shared::Shared;
use crate::store::{ChannelStatus, Lost, Payout, StoredTerms};
use wallet::facts::{Answer, SEARCH_DEPTH_BLOCKS as DEPOSIT_SEARCH_BLOCKS};

mod chain;

pub(crate) use chain::{close_due, rebroadcast_deposits, watch_channels};
use chain::{deposit_state, DepositState};

/// The seller of `spillman`.
pub(crate) struct Spillman;

#[tonic::async_trait]
impl Seller for Spillman {
    /// A spillman session opens with `OpenChannel` ([`open`]).
    fn opens_with_power_request(&self) -> bool {
        false
    }

    async fn reply(
        &self,
        cx: &SellerContext<'_>,
        issued: Issued,
    ) -> Result<v1::PowerRequestResponse, SocketError> {
        reply(cx, issued.session_id, issued.payment_id, issued.terms)
    }

    async fn pay(
        &self,
        cx: &SellerContext<'_>,
        session_id: &str,
        payment_id: u64,
        psbt: &[u8],
        terms: StoredTerms,
    ) -> Verdict {
        pay(cx, session_id, payment_id, psbt, terms).await
    }
}

/// The channel terms `outlet` offers (socket.proto `SpillmanOfferTerms`): the socket's key of
/// channel `index` (the payout index of the session the channel would open) and the outlet's
/// `[outlets.spillman]` limits.
pub(crate) fn offer_terms(
    shared: &Shared,
    outlet: &OutletConfig,
    index: u32,
) -> v1::SpillmanOfferTerms {
    let terms = &outlet.spillman;
    v1::SpillmanOfferTerms {
        socket_channel_key: shared.spillman_key(index).to_bytes(),
        min_deposit_sat: terms.min_deposit_sat,
        min_lock_blocks: terms.min_lock_blocks,
        max_lock_blocks: terms.max_lock_blocks,
        close_margin_blocks: terms.close_margin_blocks,
    }
}

/// Step 7: check the channel the cable proposes and sign its refund. The session is opened by
/// the caller; the channel is stored before the signature leaves.
pub(crate) async fn open(
    cx: &SellerContext<'_>,
    session_id: &str,
    payout: Payout,
    request: &v1::OpenChannelRequest,
) -> Result<v1::OpenChannelResponse, SocketError> {
    let refused = |reason: String| SocketError::ChannelRefused(reason);
    let cable_key = PublicKey::from_slice(&request.cable_channel_key)
        .map_err(|e| refused(format!("cable channel key: {e}")))?;
    let channel = Channel {
        cable_key,
        socket_key: cx.shared.spillman_key(payout.index),
        deposit: OutPoint::new(
            request
                .deposit_txid
                .parse()
                .map_err(|e| refused(format!("deposit txid: {e}")))?,
            request.deposit_vout,
        ),
        deposit_value: Amount::from_sat(request.deposit_sat),
        refund_lock_height: request.refund_lock_height,
        fee: Amount::from_sat(request.fee_sat),
        cable_script: ScriptBuf::from_bytes(request.cable_script.clone()),
        socket_script: payout.script.clone(),
    };
    // Our chain not answering is no refusal of the cable's channel.
    let tip = cx
        .with_chain(|shared| shared.chain.height())
        .await?
        .map_err(|e| SocketError::unavailable(e.to_string()))?;
    let terms = offer_terms(cx.shared, cx.config, payout.index);
    channel
        .check_terms(&terms, tip, cx.config.min_fee_rate_sat_per_vb)
        .map_err(|e| refused(e.to_string()))?;
    let used = cx
        .shared
        .store()
        .deposit_used(&channel.deposit)
        .map_err(SocketError::internal)?;
    if let Some(other) = used {
        return Err(refused(format!(
            "deposit {} already backs the channel of session {other}",
            channel.deposit
        )));
    }
    let refund: Transaction = encode::deserialize(&request.refund_tx)
        .map_err(|e| refused(format!("refund transaction: {e}")))?;
    channel
        .check_refund(&refund)
        .map_err(|e| refused(e.to_string()))?;
    cx.shared
        .store()
        .propose_channel(session_id, &channel)
        .map_err(SocketError::internal)?;
    let signature = channel
        .sign(&refund, &cx.shared.keys.channel_secret(payout.index))
        .map_err(SocketError::internal)?;
    tracing::info!(outlet = %cx.config.id, session = %session_id, deposit = %channel.deposit, lock_height = channel.refund_lock_height, "spillman refund signed");
    Ok(v1::OpenChannelResponse {
        session_id: session_id.to_owned(),
        refund_signature: signature.to_vec(),
    })
}

/// Step 7 once more, for the channel the cable already proposed in `session_id` (its reply
/// was lost: the socket crashed or the link dropped after the channel was stored). The request
/// must name exactly the stored channel (keys, deposit, value, lock height, fee, script) and a
/// refund that passes its check; the refund is signed again (RFC 6979: the same signature).
/// Errors: [`SocketError::ChannelRefused`] for another channel, `Internal` for the store.
pub(crate) fn reopen(
    cx: &SellerContext<'_>,
    session_id: &str,
    request: &v1::OpenChannelRequest,
) -> Result<v1::OpenChannelResponse, SocketError> {
    let refused = |reason: String| SocketError::ChannelRefused(reason);
    let store = cx.shared.store();
    let stored = store
        .channel_of(session_id)
        .map_err(SocketError::internal)?
        .ok_or_else(|| refused(format!("session {session_id} has no channel")))?;
    let index = store
        .session_payout_index(session_id)
        .map_err(SocketError::internal)?
        .ok_or_else(|| SocketError::internal(format!("session {session_id} has no payout")))?;
    drop(store);
    let channel = &stored.channel;
    let same = request.cable_channel_key == channel.cable_key.to_bytes()
        && request.deposit_txid == channel.deposit.txid.to_string()
        && request.deposit_vout == channel.deposit.vout
        && request.deposit_sat == channel.deposit_value.to_sat()
        && request.refund_lock_height == channel.refund_lock_height
        && request.fee_sat == channel.fee.to_sat()
        && request.cable_script == channel.cable_script.to_bytes();
    if !same {
        return Err(refused(format!(
            "session {session_id} is in progress with another channel"
        )));
    }
    let refund: Transaction = encode::deserialize(&request.refund_tx)
        .map_err(|e| refused(format!("refund transaction: {e}")))?;
    channel
        .check_refund(&refund)
        .map_err(|e| refused(e.to_string()))?;
    let signature = channel
        .sign(&refund, &cx.shared.keys.channel_secret(index))
        .map_err(SocketError::internal)?;
    tracing::info!(outlet = %cx.config.id, session = %session_id, deposit = %channel.deposit, "spillman refund signed again");
    Ok(v1::OpenChannelResponse {
        session_id: session_id.to_owned(),
        refund_signature: signature.to_vec(),
    })
}

/// The secret of the socket's key in the channel of `session_id` whose key is `key`: the key of
/// the session's payout index, or the one key of channels opened before keys were per channel.
fn channel_secret_of(
    shared: &Shared,
    session_id: &str,
    key: &PublicKey,
) -> Option<bitcoin::secp256k1::SecretKey> {
    let index = shared
        .store()
        .session_payout_index(session_id)
        .ok()
        .flatten();
    let secp = bitcoin::secp256k1::Secp256k1::signing_only();
    index
        .map(|i| shared.keys.channel_secret(i))
        .into_iter()
        .chain([shared.keys.legacy_channel_secret()])
        .find(|secret| secret.public_key(&secp) == key.inner)
}

/// Steps 9–11: the deposit must be exactly the channel's (its txid, the 2-of-2 output of the
/// agreed value), for a session `in_progress` on its outlet (the caller asked the outlet), and
/// acceptable to bitcoind; it is stored, then broadcast. Errors:
/// [`Refusal::Cheat`] for a deposit or request that breaks a rule; [`Refusal::Unavailable`]
/// when it cannot be checked, stored or broadcast now (bitcoind or the store): no blame, the
/// cable hands it over again. A deposit is acknowledged only once bitcoind has taken it (a
/// payment from a deposit bitcoind does not know would look double-spent), also when it is
/// handed over again.
pub(crate) async fn fund(
    cx: &SellerContext<'_>,
    request: &v1::FundChannelRequest,
    in_progress: bool,
) -> Result<String, Refusal> {
    let unavailable = |e: &dyn std::fmt::Display| Refusal::Unavailable(e.to_string());
    let stored = cx
        .shared
        .store()
        .channel_of(&request.session_id)
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| Refusal::Cheat(format!("no channel for session {}", request.session_id)))?;
    let channel = &stored.channel;
    let deposit: Transaction = encode::deserialize(&request.deposit_tx)
        .map_err(|e| Refusal::Cheat(format!("deposit transaction: {e}")))?;
    let txid = deposit.compute_txid();
    if stored.status != ChannelStatus::RefundSigned {
        // Handed over again after a lost reply or a broadcast bitcoind did not answer: the same
        // deposit is sent again and acknowledged again.
        return if stored.status == ChannelStatus::Funded && txid == channel.deposit.txid {
            broadcast_deposit(cx, deposit).await?;
            Ok(txid.to_string())
        } else {
            Err(Refusal::Cheat(format!("the channel is {}", stored.status)))
        };
    }
    if !in_progress {
        return Err(Refusal::Cheat(format!(
            "no deposit for session {}: it is not in progress",
            request.session_id
        )));
    }
    let output = deposit.output.get(channel.deposit.vout as usize);
    let script = channel
        .deposit_script_pubkey()
        .map_err(|e| Refusal::Cheat(e.to_string()))?;
    if txid != channel.deposit.txid
        || output.map(|o| (&o.script_pubkey, o.value)) != Some((&script, channel.deposit_value))
    {
        return Err(Refusal::Cheat(format!(
            "deposit {txid} is not the agreed {} of {} to the 2-of-2",
            channel.deposit, channel.deposit_value
        )));
    }
    let min_rate = cx.config.min_fee_rate_sat_per_vb;
    let checked = {
        let deposit = deposit.clone();
        cx.with_chain(move |shared| super::check_on_chain(shared, &deposit, min_rate))
            .await
            .map_err(|e| unavailable(&e))?
    };
    let checked = match checked {
        Ok(checked) => checked,
        Err(Refusal::Cheat(reason)) => return Err(Refusal::Cheat(format!("deposit: {reason}"))),
        Err(Refusal::Unavailable(reason)) => {
            return Err(Refusal::Unavailable(format!(
                "cannot check the deposit now: {reason}"
            )))
        }
        Err(Refusal::Policy(reason)) => return Err(Refusal::Policy(format!("deposit: {reason}"))),
    };
    cx.shared
        .store()
        .fund_channel(&request.session_id, &deposit, &checked.parents)
        .map_err(|e| unavailable(&e))?;
    broadcast_deposit(cx, deposit).await?;
    tracing::info!(outlet = %cx.config.id, session = %request.session_id, %txid, "spillman deposit broadcast");
    Ok(txid.to_string())
}

/// Broadcast a stored deposit. Errors: [`Refusal::Unavailable`] when bitcoind does not answer
/// (the cable hands it over again), [`Refusal::Cheat`] when it refuses it (an input spent
/// meanwhile).
async fn broadcast_deposit(cx: &SellerContext<'_>, deposit: Transaction) -> Result<(), Refusal> {
    let broadcast = cx
        .with_chain_to_the_end(move |shared| {
            // Fault point for the tests: bitcoind never answers this broadcast.
            fail::fail_point!("socket-deposit-broadcast-unanswered", |_| Err(
                wallet::WalletError::Unreachable {
                    method: "sendrawtransaction".into(),
                    message: "failpoint".into(),
                }
            ));
            shared.chain.broadcast(&deposit)
        })
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    match broadcast {
        Ok(_) => Ok(()),
        Err(wallet::WalletError::Unreachable { message, .. }) => Err(Refusal::Unavailable(
            format!("bitcoind did not answer the deposit's broadcast: {message}"),
        )),
        Err(e) => Err(super::judge_reject(&e.to_string())),
    }
}

/// The `PowerRequest` reply: the next total, one quota above the highest payment held.
fn reply(
    cx: &SellerContext<'_>,
    session_id: String,
    payment_id: u64,
    terms: StoredTerms,
) -> Result<v1::PowerRequestResponse, SocketError> {
    let stored = cx
        .shared
        .store()
        .channel_of(&session_id)
        .map_err(SocketError::internal)?
        .ok_or_else(|| SocketError::wrong_state("this session has no channel"))?;
    if stored.status != ChannelStatus::Funded {
        return Err(SocketError::wrong_state(format!(
            "the channel is {}",
            stored.status
        )));
    }
    let total = stored.highest_total + terms.amount;
    let (_, max) = stored.channel.total_range();
    if total > max {
        return Err(SocketError::wrong_state(format!(
            "the deposit is used up: {total} would pass {max}"
        )));
    }
    Ok(v1::PowerRequestResponse {
        session_id,
        payment_id,
        scheme: v1::Scheme::Spillman as i32,
        amount_msat: terms.amount.to_sat() * 1_000,
        quota_mwh: terms.quota.0,
        payout_script: stored.channel.socket_script.to_bytes(),
        terms: Some(v1::power_request_response::Terms::Spillman(
            v1::SpillmanPaymentTerms {
                value_sat: total.to_sat(),
            },
        )),
    })
}

/// Steps 12–14: the payment must be exactly the channel's payment of one quota more, signed by
/// the cable; it is held as the highest (persisted); the caller credits it. A bad one is a
/// cheat ([`SocketError::Cheat`]: the caller locks out).
async fn pay(
    cx: &SellerContext<'_>,
    session_id: &str,
    payment_id: u64,
    psbt: &[u8],
    terms: StoredTerms,
) -> Verdict {
    let stored = cx
        .shared
        .store()
        .channel_of(session_id)
        .map_err(SocketError::internal)?
        .ok_or_else(|| SocketError::wrong_state("this session has no channel"))?;
    if stored.status != ChannelStatus::Funded {
        return Err(SocketError::wrong_state(format!(
            "the channel is {}",
            stored.status
        )));
    }
    let channel = &stored.channel;
    // Chain checks off the async workers. A deposit double-spent before it confirmed pays
    // nothing: stop crediting (the loss is what was credited since the deposit was last seen,
    // bounded by min_confirmations).
    let min_confirmations = cx.config.spillman.min_confirmations;
    let outpoint = channel.deposit;
    let depth = cx.shared.config.final_confirmations.max(1) + DEPOSIT_SEARCH_BLOCKS;
    let deposit_tx = stored.deposit.clone();
    let deposit = cx
        .with_chain(move |shared| deposit_state(shared, outpoint, deposit_tx.as_ref(), depth))
        .await?;
    let confirmations = match deposit {
        Answer::Found(DepositState::Unspent(utxo)) => utxo.confirmations,
        // The deposit replaced by a named transaction: the cable double-spent it before it
        // confirmed (design.md "Blame needs proof").
        Answer::Found(DepositState::Replaced { input, by }) => {
            let reason =
                format!("the deposit was double-spent: its input {input} was spent by {by}");
            cx.shared.payment_lost(
                &cx.config.id,
                session_id,
                Lost::Channel,
                stored.highest_total,
                "channel-lost",
                &reason,
            );
            return Err(SocketError::Cheat(reason));
        }
        // The deposit's output spent: by the close, or by the refund the socket signed (it
        // unlocked before the socket closed): no more payments on it, nobody to blame.
        Answer::Found(DepositState::Spent(by)) => {
            return Err(SocketError::wrong_state(format!(
                "the channel's deposit was spent by {by}: the channel is closed"
            )));
        }
        // Gone from the mempool, nobody spent it (evicted, or its parent was): the chain
        // watch sends it again; no blame.
        Answer::Found(DepositState::Missing) | Answer::NotFound => {
            return Err(SocketError::unavailable(format!(
                "the deposit {} is not in the mempool or the chain (evicted?): it is sent again",
                channel.deposit
            )));
        }
        Answer::NoAnswer(e) | Answer::Refused(e) => return Err(SocketError::unavailable(e)),
    };
    if confirmations < min_confirmations {
        return Err(SocketError::unavailable(format!(
            "the deposit has {confirmations} of {min_confirmations} confirmations"
        )));
    }
    let psbt = match Psbt::deserialize(psbt) {
        Ok(psbt) => psbt,
        Err(e) => return Err(SocketError::Cheat(format!("not a PSBT: {e}"))),
    };
    let Some(signature) = psbt
        .inputs
        .first()
        .and_then(|i| i.partial_sigs.get(&channel.cable_key))
        .copied()
    else {
        return Err(SocketError::Cheat(
            "the payment carries no signature by the cable's channel key".into(),
        ));
    };
    let tx = psbt.unsigned_tx;
    let total = stored.highest_total + terms.amount;
    channel
        .check_payment(&tx, total, &signature)
        .map_err(|e| SocketError::Cheat(e.to_string()))?;
    // Held before it is credited; on a deposit not yet confirmed, only within the cable's
    // unconfirmed limit (a double spend of the deposit would take the channel's credit back).
    let deposit_confirmed = confirmations > 0;
    let hold = |store: &mut crate::store::Store| {
        store.hold_channel_payment(
            session_id,
            payment_id,
            &tx,
            &signature,
            total,
            deposit_confirmed,
            terms,
            channel.fee,
        )
    };
    if deposit_confirmed {
        hold(&mut cx.shared.store()).map_err(SocketError::internal)?;
    } else {
        cx.shared
            .persist_within_unconfirmed_limit(session_id, terms.amount, hold)?;
    }
    Ok(Credit {
        quota: terms.quota,
        txid: tx.compute_txid().to_string(),
    })
}
