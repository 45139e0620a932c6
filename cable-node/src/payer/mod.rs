//! The plug-in flow of the cable (paper seed 000 §V, Table I; design.md "Payment schemes",
//! "Architecture v2"), and the payer side of each scheme, one module each: [`onchain`],
//! [`single_fee`], [`spillman`] (each a [`Payer`]: check the terms, sign, store before
//! sending) and [`lightning`] (invoices and keysends over the cable's Lightning node);
//! [`metering`] holds the cable's checks of its socket (its own meter, QuotaLow storms, the
//! receipts it countersigns), [`status`] its reading of the socket's signed statuses, [`pay`]
//! one quota's payment, [`session`] the session's record and report; the link to the socket
//! is [`crate::link`].
//!
//! `GetOffer` → policy check → `WatchStatus` (plugging in opens the link) → `PowerRequest` →
//! check the terms → build the payment with the wallet → check it → persist → `PayTransaction`;
//! then a new quota on each `QuotaLow` while the appliance draws power and the budget allows.
//! The appliance relay closes only once the socket says Paid (paper §VII.A). The session ends
//! when the appliance has gone idle, when the budget is spent and the quota used, or when the
//! socket locks the cable out.

mod lightning;
mod metering;
mod onchain;
mod pay;
mod session;
mod single_fee;
pub mod spillman;
mod status;

use session::Session;
pub use session::{PaymentReport, SessionReport};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

use crate::signer::RequestSigner;
use anyhow::Context;
use bitcoin::hex::DisplayHex;
use bitcoin::ScriptBuf;
use hw::cable::CableHardware;
use proto::identity::session_hash;
use proto::units::PriceMsatPerWh;
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, watch_status_response::Event};
use tonic::transport::Channel;
use tonic::Code;
use wallet::chain::Chain;
use wallet::keys::NodeKeys;
use wallet::onchain::NodeWallet;

use crate::config::CableConfig;
pub use crate::error::CableError;
use crate::link::Link;
use crate::policy::AcceptedOffer;
use crate::store::{CableStore, SignedRecord};

/// The payer side of a scheme paid with `PayTransaction` (design.md "Architecture v2"):
/// check the socket's terms for one quota and sign the payment, stored before it leaves the
/// cable. Adding such a scheme is one module implementing this trait, named in [`payer_of`].
trait Payer {
    /// Check `terms` against the accepted offer and the session, sign the payment, and store
    /// it. Errors: [`CableError::CableRefusedSocket`] for terms that break a rule (nothing signed).
    fn sign(
        &self,
        cable: &mut Cable,
        session: &mut Session,
        terms: &v1::PowerRequestResponse,
        accepted: &AcceptedOffer,
    ) -> Result<SignedRecord, CableError>;
}

/// The payer of `scheme`, when it is paid with `PayTransaction`.
fn payer_of(scheme: v1::Scheme) -> Option<&'static dyn Payer> {
    match scheme {
        v1::Scheme::Onchain => Some(&onchain::Onchain),
        v1::Scheme::SingleFee => Some(&single_fee::SingleFee),
        v1::Scheme::Spillman => Some(&spillman::Spillman),
        v1::Scheme::Lightning | v1::Scheme::Unspecified => None,
    }
}

/// A cable: wallet, chain, store, policy and the relay to its appliance.
pub struct Cable {
    config: CableConfig,
    data_dir: std::path::PathBuf,
    keys: NodeKeys,
    /// Signs the requests that change a session with the identity key.
    signer: RequestSigner,
    ln: Option<Arc<ln::ldk_node::Node>>,
    /// Payment outcomes reported by the Lightning node, for those who wait on them.
    ln_events: Arc<crate::lightning::PaymentEvents>,
    wallet: NodeWallet,
    chain: Chain,
    store: CableStore,
    /// The relay to the appliance and the cable's own meter.
    hw: CableHardware,
    /// The link to the socket.
    link: Link,
}

impl Cable {
    /// Open the cable of `data_dir` (seed, wallet and store created on first start) and connect
    /// to bitcoind.
    pub fn open(config: CableConfig, data_dir: &Path) -> anyhow::Result<Self> {
        wallet::keys::private_data_dir(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let keys = NodeKeys::load_or_create(data_dir, config.network)?;
        let wallet = NodeWallet::open(data_dir, &keys)?;
        let chain = Chain::connect(&config.chain, config.network)?;
        let store = CableStore::open(data_dir).context("opening the store")?;
        let hw = CableHardware::open(&config.hw).context("the cable's hardware ([hw])")?;
        let link = Link::new(
            config.socket.clone(),
            Duration::from_secs(config.session.reconnect_secs),
        );
        Ok(Cable {
            config,
            data_dir: data_dir.to_owned(),
            signer: RequestSigner::persistent(
                keys.identity_secret(),
                data_dir.join("request_sequence"),
            )
            .context("the request sequence")?,
            keys,
            ln: None,
            ln_events: Arc::default(),
            wallet,
            chain,
            store,
            hw,
            link,
        })
    }
    /// Plug in and run one session to its end.
    pub async fn run_session(&mut self) -> Result<SessionReport, CableError> {
        let mut client = self.link.connect().await?;
        let nonce: [u8; 32] = bitcoin::secp256k1::rand::random();
        let signed = client
            .get_offer(v1::GetOfferRequest {
                outlet_id: self.config.outlet_id.clone(),
                cable_nonce: nonce.to_vec(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("GetOffer: {}", s.message()))?
            .into_inner();
        let accepted = self
            .config
            .policy
            .check_signed_offer(&signed, &self.config.outlet_id, &nonce, self.config.network)
            .map_err(|reason| CableError::CableRefusedSocket(format!("offer: {reason}")))?;
        let offer = accepted.offer.clone();
        let socket_key = offer.socket_identity_key.to_lower_hex_string();
        if let Some(reason) = self
            .store
            .meet_socket(&socket_key)
            .context("reading the registry of sockets")?
        {
            return Err(CableError::CableRefusedSocket(format!(
                "socket {socket_key} is flagged in the cable's registry: {reason} \
                 (`cable-node sockets --allow {socket_key}` trusts it again)"
            )));
        }
        tracing::info!(
            price_msat_per_wh = offer.price_msat_per_wh,
            quota_mwh = offer.quota_mwh,
            quota = %accepted.quota_amount,
            "offer accepted"
        );
        tokio::task::block_in_place(|| self.wallet.sync(&self.chain))
            .map_err(anyhow::Error::from)?;
        self.refund_due()?;
        let mut channel_opened = None;
        if accepted.scheme == v1::Scheme::Lightning {
            // The channel is ready before plugging in: no session waits for confirmations.
            let ln = self.lightning()?;
            let terms = proto::terms::offered_lightning(&offer)
                .map_err(|e| CableError::CableRefusedSocket(e.to_string()))?;
            let socket = crate::lightning::peer_of(&terms.node_id, &terms.address)?;
            let amount_msat = PriceMsatPerWh(offer.price_msat_per_wh)
                .cost_of(accepted.quota)
                .map_err(anyhow::Error::from)?
                .0;
            let settings = self.config.lightning.clone();
            channel_opened = tokio::task::block_in_place(|| {
                crate::lightning::ensure_route(&ln, &socket, amount_msat, &settings)
            })?;
        }

        let mut stream = client
            .watch_status(self.signer.sign(
                &accepted.socket,
                v1::WatchStatusRequest {
                    outlet_id: self.config.outlet_id.clone(),
                    auth: None,
                },
            ))
            .await
            .map_err(|s| anyhow::anyhow!("WatchStatus: {}", s.message()))?
            .into_inner();
        let plugged_at = Instant::now();
        tracing::info!("plugged in");
        let mut session = Session::new();
        self.start_metering(&mut session);
        if let Some(txid) = channel_opened {
            session.onchain_txs.push(PaymentReport {
                payment_id: 0,
                txid,
                amount_sat: self.config.lightning.channel_sat,
                fee_sat: 0,
                vsize: 0,
                latency_ms: None,
            });
        }
        if let Some(unfinished) = self
            .store
            .unfinished_session(&self.config.outlet_id, &socket_key)
            .context("reading the store")?
        {
            tracing::info!(session = %unfinished.id, paid = %unfinished.committed, "resuming the session the cable stopped in");
            session.id = unfinished.id;
            session.paid = unfinished.committed;
            session.payout_script = unfinished.payout_script.map(ScriptBuf::into_bytes);
            session.resumed = true;
        }
        if accepted.scheme == v1::Scheme::Spillman && !session.id.is_empty() {
            spillman::resume(
                &mut client,
                &self.signer,
                &accepted.socket,
                &session.id,
                &self.store,
                &mut self.wallet,
            )
            .await?;
        }
        if accepted.scheme == v1::Scheme::Spillman && session.id.is_empty() {
            // The channel opens the session (seed 003 steps 4–11), once plugged in.
            let (id, deposit) = spillman::open(
                &mut client,
                &self.signer,
                &self.config.outlet_id,
                &accepted,
                &self.config.policy,
                &mut self.wallet,
                &self.chain,
                &self.store,
            )
            .await?;
            session.id = id;
            session.onchain_txs.push(PaymentReport {
                payment_id: 0,
                txid: deposit.compute_txid().to_string(),
                amount_sat: 0,
                fee_sat: 0,
                vsize: deposit.vsize() as u64,
                latency_ms: None,
            });
        }
        let idle = Duration::from_secs_f64(self.config.session.unplug_when_idle_secs);
        // SIGTERM or SIGINT (systemd stopping the service, Ctrl-C): unplug cleanly between
        // messages, never in the middle of a payment.
        let mut terminate = signal(SignalKind::terminate()).context("the SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("the SIGINT handler")?;
        let result = async {
            self.pay_quota(&mut client, &accepted, &mut session).await?;
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    _ = terminate.recv() => return Ok("stopped (SIGTERM)".to_owned()),
                    _ = interrupt.recv() => return Ok("stopped (SIGINT)".to_owned()),
                };
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) | Err(_) => {
                        tracing::warn!("link to the socket lost");
                        (client, stream) = self.link.reconnect(&self.signer, &accepted.socket, &self.config.outlet_id).await?;
                        continue;
                    }
                };
                match message.event {
                    Some(Event::Status(status)) => {
                        if let Some(outcome) = self.on_status(&status, &accepted, &mut session, plugged_at, idle)? {
                            return Ok(outcome);
                        }
                    }
                    Some(Event::QuotaLow(low)) => {
                        let Some(report) = self.check_status(low.signed.as_ref(), &accepted, &mut session)? else {
                            continue;
                        };
                        if session.id.is_empty() || report.session_hash != session_hash(&session.id) {
                            tracing::debug!("quota low of another session");
                        } else if report.quota_remaining_mwh > accepted.quota.0
                            || metering::paid_unused_mwh(&session, &report, &accepted) > i128::from(accepted.quota.0)
                        {
                            // The socket's word or the cable's own books say more than a
                            // quota is paid and unused: not paying.
                            self.unfounded_quota_low(&mut session, &report, &accepted)?;
                        } else if low.power_mw == 0 && low.quota_remaining_mwh == 0 && session.drew_power {
                            // Paid energy all used and the appliance is off: done, before the
                            // socket's grace period runs out.
                            return Ok("appliance done".to_owned());
                        } else if low.power_mw == 0 {
                            tracing::info!("quota low, but the appliance draws nothing: not topping up");
                        } else if !self.config.policy.allows(session.paid, accepted.quota_amount) {
                            tracing::warn!(paid = %session.paid, "quota low, but the session budget is spent");
                        } else {
                            self.pay_quota(&mut client, &accepted, &mut session).await?;
                        }
                    }
                    None => {}
                }
            }
        }
        .await;
        // A clean unplug: end the session (signed, so only this cable can), and take the
        // socket's final count of its energy; when it already ended, ask the status.
        let ended = if session.id.is_empty() {
            None
        } else {
            let receipt = self.receipt(&session).unwrap_or_else(|e| {
                tracing::warn!("the final receipt: {e}");
                None
            });
            let request = self.signer.sign(
                &accepted.socket,
                v1::EndSessionRequest {
                    session_id: session.id.clone(),
                    auth: None,
                    receipt,
                },
            );
            match client.end_session(request).await {
                Ok(reply) => Some(reply.into_inner().energy_used_mwh),
                Err(status) => {
                    tracing::debug!(session = %session.id, "EndSession: {}", status.message());
                    None
                }
            }
        };
        if let Some(used) = ended {
            session.energy_used_mwh = used;
        } else if let Ok(status) = client
            .get_status(v1::GetStatusRequest {
                outlet_id: self.config.outlet_id.clone(),
            })
            .await
        {
            let status = status.into_inner();
            if let Ok(Some(report)) =
                self.check_status(status.signed.as_ref(), &accepted, &mut session)
            {
                if report.session_hash == session_hash(&session.id) {
                    session.energy_used_mwh = report.energy_used_mwh;
                }
            }
        }
        if let Some(ln) = self.ln.take() {
            let _ = tokio::task::block_in_place(|| ln.stop());
        }
        // Unplug: open the appliance relay, drop the link.
        drop(stream);
        let _ = self.hw.relay.open();
        self.hw.set_mains(false);
        let outcome = match &result {
            Ok(outcome) => outcome.clone(),
            Err(e) => format!("failed: {e}"),
        };
        self.finish_session(&mut session, &outcome);
        if accepted.scheme == v1::Scheme::Spillman {
            // The socket closes the channel with the highest payment, whose txid the cable
            // knows: a segwit txid does not cover the witness the socket adds.
            if let Some(last) = session.payments.last() {
                session.onchain_txs.push(PaymentReport {
                    amount_sat: session.paid.to_sat(),
                    ..last.clone()
                });
            }
        }
        tracing::info!(%outcome, payments = session.payments.len(), paid = %session.paid, "unplugged");
        result.map(|outcome| SessionReport {
            session_id: session.id,
            outcome,
            payments: session.payments,
            onchain_txs: session.onchain_txs,
            plug_in_to_paid_ms: session.plug_in_to_paid.map(|d| d.as_millis() as u64),
            energy_used_mwh: session.energy_used_mwh,
        })
    }
    /// `PowerRequest`, reconnecting while the socket is unreachable. A resumed session the
    /// socket no longer knows is ended here and a new one asked for.
    async fn request_terms(
        &mut self,
        client: &mut SocketClient<Channel>,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<v1::PowerRequestResponse, CableError> {
        loop {
            // The receipt of the quota being used up, for the socket to keep.
            let receipt = if session.id.is_empty() {
                None
            } else {
                self.receipt(session)?
            };
            let request = self.signer.sign(
                &accepted.socket,
                v1::PowerRequestRequest {
                    outlet_id: self.config.outlet_id.clone(),
                    scheme: accepted.scheme as i32,
                    session_id: session.id.clone(),
                    max_amount_sat: match accepted.scheme {
                        v1::Scheme::SingleFee => accepted.single_fee_max.to_sat(),
                        _ => 0,
                    },
                    auth: None,
                    receipt,
                    // An opening request: the socket resumes a session it opened for this offer
                    // whose reply was lost.
                    offer_payout_script: if session.id.is_empty() {
                        accepted.offer.payout_script.clone()
                    } else {
                        Vec::new()
                    },
                },
            );
            match client.power_request(request).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if crate::link::retryable(&status) => {
                    tracing::warn!("PowerRequest: {}; asking again", status.message());
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    *client = self.link.reconnect_client().await?;
                }
                Err(status) if session.resumed && status.code() == Code::FailedPrecondition => {
                    tracing::warn!(session = %session.id, "the socket ended the session while the cable was away: {}", status.message());
                    self.finish_session(session, "ended while the cable was away");
                    *session = Session::new();
                }
                Err(status) => {
                    return Err(CableError::SocketRefusedCable(format!(
                        "PowerRequest: {}",
                        status.message()
                    )))
                }
            }
        }
    }
    /// End a session in the store, settling its open input set.
    fn finish_session(&mut self, session: &mut Session, outcome: &str) {
        if session.id.is_empty() {
            return;
        }
        if let Ok(Some(set)) = self.store.current_set(&session.id) {
            if let Err(e) = self.settle_set(session, &set) {
                tracing::warn!("settling the input set: {e}");
            }
        }
        if let Err(e) = self.store.end_session(&session.id, outcome) {
            // The session stays open in the store: the next run resumes and ends it.
            tracing::error!(session = %session.id, "the store did not end the session: {e}");
        }
    }
    /// Take back the deposit of every spillman channel the socket left open past its refund's
    /// lock height (seed 003 "Protocol Peculiarities"). Returns the refunds broadcast.
    pub fn refund_due(&mut self) -> anyhow::Result<Vec<bitcoin::Txid>> {
        let refunded =
            tokio::task::block_in_place(|| spillman::refund_due(&self.store, &self.chain))?;
        for txid in &refunded {
            tracing::info!(%txid, "deposit refunded");
        }
        Ok(refunded)
    }
    /// The wallet, for `address` and `balance`.
    pub fn wallet(&mut self) -> &mut NodeWallet {
        &mut self.wallet
    }
    /// Sync the wallet with bitcoind.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        Ok(self.wallet.sync(&self.chain)?)
    }
}
