//! The cable's side of the `spillman` payment channel (seed 003 "Micropayment Channel
//! Protocol" steps 4–17; design.md): build the deposit and the refund, get the refund signed
//! **before** handing over the deposit (and store it signed first), sign each payment one
//! quota higher, and take the refund alone once its lock height is reached if the socket never
//! closed. Transactions come from [`proto::spillman`], the same rules the socket applies.

use crate::signer::RequestSigner;
use anyhow::Context;
use bitcoin::consensus::encode;
use bitcoin::hex::DisplayHex;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{rand, Secp256k1, SecretKey};
use bitcoin::{Amount, OutPoint, PublicKey, Txid};
use proto::request_auth::Recipient;
use proto::spillman::{Channel, Signer};
use proto::v1;
use proto::v1::socket_client::SocketClient;
use tonic::transport;
use wallet::chain::Chain;
use wallet::onchain::NodeWallet;

use super::{Cable, CableError, Payer, Session};
use crate::policy::{AcceptedOffer, Policy};
use crate::store::{CableStore, SignedRecord};

/// The payer of `spillman`.
pub(super) struct Spillman;

impl Payer for Spillman {
    fn sign(
        &self,
        cable: &mut Cable,
        session: &mut Session,
        terms: &v1::PowerRequestResponse,
        accepted: &AcceptedOffer,
    ) -> Result<SignedRecord, CableError> {
        sign_payment(&cable.store, &session.id, terms, accepted)
    }
}

/// Open a channel with the socket (steps 4–11): the deposit covers the session budget and the
/// channel's fee; the refund unlocks `policy.spillman_lock_blocks` from now. Returns the session
/// id the socket opened and the deposit transaction.
///
/// Errors: the socket refuses the channel or signs a wrong refund (then the deposit never
/// leaves the cable), or refuses the deposit.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    client: &mut SocketClient<transport::Channel>,
    signer: &RequestSigner,
    outlet_id: &str,
    accepted: &AcceptedOffer,
    policy: &Policy,
    wallet: &mut NodeWallet,
    chain: &Chain,
    store: &CableStore,
) -> Result<(String, bitcoin::Transaction), CableError> {
    let refuse = |reason: String| CableError::CableRefusedSocket(format!("channel: {reason}"));
    let terms =
        proto::terms::offered_spillman(&accepted.offer).map_err(|e| refuse(e.to_string()))?;
    let socket_key =
        PublicKey::from_slice(&terms.socket_channel_key).map_err(|e| refuse(e.to_string()))?;
    let secret = SecretKey::new(&mut rand::thread_rng());
    let cable_key = PublicKey::new(secret.public_key(&Secp256k1::signing_only()));
    let (tip, cable_script) = tokio::task::block_in_place(|| {
        wallet.sync(chain)?;
        anyhow::Ok((chain.height()?, wallet.receive_address(1)?.script_pubkey()))
    })?;
    let mut channel = Channel {
        cable_key,
        socket_key,
        deposit: OutPoint::null(),
        deposit_value: Amount::ZERO,
        refund_lock_height: tip + policy.spillman_lock_blocks,
        fee: Amount::ZERO,
        cable_script,
        socket_script: bitcoin::ScriptBuf::from_bytes(accepted.offer.payout_script.clone()),
    };
    channel.fee = channel
        .fee_at(policy.fee_rate_sat_per_vb_for(accepted))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    channel.deposit_value = Amount::from_sat(policy.max_session_sat) + channel.fee;
    let script = channel
        .deposit_script_pubkey()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let deposit = tokio::task::block_in_place(|| {
        wallet.pay(
            &script,
            channel.deposit_value,
            policy.fee_rate_for(accepted),
            policy.max_fee(),
        )
    })
    .map_err(anyhow::Error::from)?
    .tx;
    let vout = deposit
        .output
        .iter()
        .position(|o| o.script_pubkey == script)
        .context("the deposit pays no 2-of-2 output")?;
    channel.deposit = OutPoint::new(deposit.compute_txid(), vout as u32);
    // The channel proposed must pass the check the socket runs (at the relay minimum fee rate;
    // the socket may ask for more).
    channel
        .check_terms(terms, tip, 1)
        .map_err(|e| anyhow::anyhow!("the channel built breaks the offer's terms: {e}"))?;
    let refund = channel.refund().map_err(|e| anyhow::anyhow!("{e}"))?;
    let deposit_txid = channel.deposit.txid.to_string();
    store
        .propose_channel(&secret, &channel, &deposit)
        .context("storing the channel")?;

    // Steps 6–8: the socket signs the refund without having seen the signed deposit. No answer
    // (the socket or the link went away): propose the same channel again, for up to
    // FUND_PATIENCE; the socket answers its stored proposal again (socket.proto OpenChannel).
    let deadline = std::time::Instant::now() + FUND_PATIENCE;
    let reply = loop {
        let reply = client
            .open_channel(signer.sign(
                &accepted.socket,
                v1::OpenChannelRequest {
                    outlet_id: outlet_id.to_owned(),
                    cable_channel_key: cable_key.to_bytes(),
                    deposit_txid: deposit_txid.clone(),
                    deposit_vout: channel.deposit.vout,
                    deposit_sat: channel.deposit_value.to_sat(),
                    refund_lock_height: channel.refund_lock_height,
                    fee_sat: channel.fee.to_sat(),
                    cable_script: channel.cable_script.to_bytes(),
                    refund_tx: encode::serialize(&refund),
                    auth: None,
                },
            ))
            .await;
        match reply {
            Err(status)
                if crate::link::retryable(&status) && std::time::Instant::now() < deadline =>
            {
                tracing::warn!("OpenChannel: {}; proposing it again", status.message());
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            reply => break reply,
        }
    };
    let reply = match reply {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            // Without a signed refund the deposit never leaves the cable.
            if let Err(e) = store.set_channel_status(&deposit_txid, "abandoned") {
                tracing::error!(%deposit_txid, "the store did not mark the channel abandoned: {e}");
            }
            return Err(refuse(format!(
                "the socket would not sign the refund: {}",
                status.message()
            )));
        }
    };
    let socket_signature = bitcoin::ecdsa::Signature::from_slice(&reply.refund_signature)
        .map_err(|e| e.to_string())
        .and_then(|signature| {
            channel
                .verify(&refund, Signer::Socket, &signature)
                .map(|()| signature)
                .map_err(|e| e.to_string())
        });
    let socket_signature = match socket_signature {
        Ok(signature) => signature,
        Err(reason) => {
            // The deposit never leaves the cable.
            if let Err(e) = store.set_channel_status(&deposit_txid, "abandoned") {
                tracing::error!(%deposit_txid, "the store did not mark the channel abandoned: {e}");
            }
            return Err(refuse(format!("the socket's refund signature: {reason}")));
        }
    };
    let cable_signature = channel
        .sign(&refund, &secret)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let refund = channel
        .finalize(&refund, cable_signature, socket_signature)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Durable before the deposit leaves (step 9): the refund, and the session, which a cable
    // restarted from here on resumes.
    store
        .refund_signed(&deposit_txid, &reply.session_id, &refund)
        .context("storing the signed refund")?;
    store
        .open_session(
            &reply.session_id,
            &accepted.offer.socket_identity_key.to_lower_hex_string(),
            outlet_id,
            &accepted.offer.payout_script,
        )
        .context("storing the session")?;
    fund(
        client,
        signer,
        &accepted.socket,
        &reply.session_id,
        &deposit,
        store,
        wallet,
    )
    .await?;
    tracing::info!(deposit = %deposit_txid, value = %channel.deposit_value, lock_height = channel.refund_lock_height, "spillman channel open");
    Ok((reply.session_id, deposit))
}

/// How long the cable keeps handing a deposit over to a socket that cannot check it yet.
const FUND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Steps 9–11: hand the deposit over (again, after a restart: the socket acknowledges the same
/// deposit twice) and mark the channel funded.
async fn fund(
    client: &mut SocketClient<transport::Channel>,
    signer: &RequestSigner,
    to: &Recipient,
    session_id: &str,
    deposit: &bitcoin::Transaction,
    store: &CableStore,
    wallet: &mut NodeWallet,
) -> Result<(), CableError> {
    let deposit_txid = deposit.compute_txid().to_string();
    // The socket may not be able to check it now (bitcoind away): hand it over again, for up
    // to FUND_PATIENCE; the socket acknowledges the same deposit twice.
    let deadline = std::time::Instant::now() + FUND_PATIENCE;
    let funded = loop {
        let reply = client
            .fund_channel(signer.sign(
                to,
                v1::FundChannelRequest {
                    session_id: session_id.to_owned(),
                    deposit_tx: encode::serialize(deposit),
                    auth: None,
                },
            ))
            .await;
        match reply {
            Ok(reply) => break reply.into_inner(),
            Err(status)
                if crate::link::retryable(&status) && std::time::Instant::now() < deadline =>
            {
                tracing::warn!(
                    "FundChannel: {}; handing the deposit over again",
                    status.message()
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(status) => return Err(CableError::SocketRefusedCable(status.message().to_owned())),
        }
    };
    if funded.deposit_txid != deposit_txid {
        return Err(CableError::CableRefusedSocket(format!(
            "channel: the socket reports deposit {} for ours {deposit_txid}",
            funded.deposit_txid
        )));
    }
    store
        .set_channel_status(&deposit_txid, "funded")
        .context("storing the channel")?;
    tokio::task::block_in_place(|| wallet.record_sent(deposit)).map_err(anyhow::Error::from)?;
    Ok(())
}

/// Resume the channel of a session the cable stopped in: a deposit whose hand-over was cut
/// short is handed over again.
pub async fn resume(
    client: &mut SocketClient<transport::Channel>,
    signer: &RequestSigner,
    to: &Recipient,
    session_id: &str,
    store: &CableStore,
    wallet: &mut NodeWallet,
) -> Result<(), CableError> {
    let stored = store
        .channel_of_session(session_id)
        .context("reading the store")?;
    if let Some(stored) = stored.filter(|c| c.status == "refund-signed") {
        tracing::info!(deposit = %stored.channel.deposit.txid, "handing the deposit over again");
        fund(
            client,
            signer,
            to,
            session_id,
            &stored.deposit,
            store,
            wallet,
        )
        .await?;
    }
    Ok(())
}

/// Check the terms of the next payment and sign it (steps 12–13): exactly one quota above what
/// the session committed, from the session's channel. Stored before it leaves.
pub fn sign_payment(
    store: &CableStore,
    session_id: &str,
    terms: &v1::PowerRequestResponse,
    accepted: &AcceptedOffer,
) -> Result<SignedRecord, CableError> {
    let refuse = |reason: String| CableError::CableRefusedSocket(format!("terms: {reason}"));
    let value_sat = proto::terms::spillman_terms(terms)
        .map_err(|e| refuse(e.to_string()))?
        .value_sat;
    if terms.quota_mwh != accepted.quota.0
        || terms.amount_msat != accepted.quota_amount.to_sat() * 1_000
    {
        return Err(refuse(format!(
            "{} msat for {} mWh is not the offer's quota",
            terms.amount_msat, terms.quota_mwh
        )));
    }
    let stored = store
        .channel_of_session(session_id)
        .context("reading the store")?
        .ok_or_else(|| anyhow::anyhow!("session {session_id} has no channel"))?;
    let committed = store.committed(session_id).context("reading the store")?;
    let total = committed + accepted.quota_amount;
    if value_sat != total.to_sat() {
        return Err(refuse(format!(
            "total {value_sat} sat is not one quota above the {committed} paid"
        )));
    }
    let channel = &stored.channel;
    let tx = channel.payment(total).map_err(|e| refuse(e.to_string()))?;
    let signature = channel
        .sign(&tx, &stored.secret)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut psbt = Psbt::from_unsigned_tx(tx.clone()).context("a payment PSBT")?;
    psbt.inputs[0].witness_utxo = Some(bitcoin::TxOut {
        value: channel.deposit_value,
        script_pubkey: channel
            .deposit_script_pubkey()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    });
    psbt.inputs[0].witness_script = channel
        .descriptor()
        .ok()
        .and_then(|d| d.explicit_script().ok());
    psbt.inputs[0]
        .partial_sigs
        .insert(channel.cable_key, signature);
    let record = SignedRecord {
        payment_id: terms.payment_id,
        txid: tx.compute_txid(),
        amount: accepted.quota_amount,
        fee: Amount::ZERO,
        vsize: 0,
        status: "signed".into(),
        psbt: psbt.serialize(),
    };
    store
        .record_signed(session_id, &record)
        .context("storing the signed payment")?;
    Ok(record)
}

/// Broadcast the refund of every channel whose lock height is reached and whose deposit is
/// still unspent (the socket never closed it). Returns the refunds broadcast.
pub fn refund_due(store: &CableStore, chain: &Chain) -> anyhow::Result<Vec<Txid>> {
    let tip = chain.height()?;
    let mut refunded = Vec::new();
    for stored in store.refundable_channels()? {
        let Some(refund) = &stored.refund else {
            continue;
        };
        let deposit = stored.channel.deposit;
        if tip < stored.channel.refund_lock_height {
            continue;
        }
        if chain.unspent_value(deposit)?.is_none() {
            // Closed by the socket, or never broadcast: nothing to take back.
            if chain.confirmation_height(&deposit.txid)?.is_some() {
                store.set_channel_status(&deposit.txid.to_string(), "closed")?;
            }
            continue;
        }
        let txid = chain.broadcast(refund)?;
        store.set_channel_status(&deposit.txid.to_string(), "refunded")?;
        tracing::info!(%txid, deposit = %deposit, "spillman refund broadcast");
        refunded.push(txid);
    }
    Ok(refunded)
}
