//! The plug-in flow of the cable (paper seed 000 §V, Table I; design.md "Payment schemes",
//! "Architecture v2"), and the payer side of each scheme, one module each: [`onchain`],
//! [`single_fee`], [`spillman`] (each a [`Payer`]: check the terms, sign, store before
//! sending) and [`lightning`] (invoices and keysends over the cable's Lightning node);
//! [`metering`] holds the cable's checks of its socket (its own meter, QuotaLow storms, the
//! receipts it countersigns).
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
mod single_fee;
pub mod spillman;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

use crate::signer::RequestSigner;
use anyhow::Context;
use bitcoin::hex::DisplayHex;
use bitcoin::{Amount, ScriptBuf};
use hw::cable::CableHardware;
use metering::Latest;
use proto::identity::session_hash;
use proto::receipt::MeterCheck;
use proto::units::PriceMsatPerWh;
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, watch_status_response::Event, OutletState};
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use wallet::chain::Chain;
use wallet::keys::NodeKeys;
use wallet::onchain::NodeWallet;

use crate::config::CableConfig;
pub use crate::error::CableError;
use crate::policy::AcceptedOffer;
use crate::store::{CableStore, SignedRecord};

/// The payer side of a scheme paid with `PayTransaction` (design.md "Architecture v2"):
/// check the socket's terms for one quota and sign the payment, stored before it leaves the
/// cable. Adding such a scheme is one module implementing this trait, named in [`payer_of`].
trait Payer {
    /// Check `terms` against the accepted offer and the session, sign the payment, and store
    /// it. Errors: [`CableError::RefusedSocket`] for terms that break a rule (nothing signed).
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

/// What a session did, for people and for the demo (`--report FILE`, JSON).
#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    /// The socket's session id.
    pub session_id: String,
    /// How it ended.
    pub outcome: String,
    /// Each payment the socket accepted.
    pub payments: Vec<PaymentReport>,
    /// The transactions that went on chain: each payment for `onchain`, one per input set
    /// for `single-fee` (its highest value, with the fee paid once).
    pub onchain_txs: Vec<PaymentReport>,
    /// Real time from plug-in to the appliance relay closing.
    pub plug_in_to_paid_ms: Option<u64>,
    /// Energy the socket metered in the session.
    pub energy_used_mwh: u64,
}

/// One accepted payment.
#[derive(Debug, Clone, Serialize)]
pub struct PaymentReport {
    /// Payment id within the session.
    pub payment_id: u64,
    /// Transaction id.
    pub txid: String,
    /// Paid to the socket.
    pub amount_sat: u64,
    /// Paid to miners.
    pub fee_sat: u64,
    /// Virtual size.
    pub vsize: u64,
    /// Time from the cable's request of the quota (`PowerRequest`, or the keysend) to the
    /// socket's credit (its `PayTransaction` reply, or the Lightning payment's success).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
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
}

struct Session {
    id: String,
    paid: Amount,
    payments: Vec<PaymentReport>,
    plug_in_to_paid: Option<Duration>,
    drew_power: bool,
    idle_since: Option<Instant>,
    energy_used_mwh: u64,
    /// Whether a status has shown this session (older statuses may predate it).
    seen_in_status: bool,
    /// The sequence of the newest signed status seen: older ones are stale.
    last_status_sequence: u64,
    /// Transactions that went on chain for the session.
    onchain_txs: Vec<PaymentReport>,
    /// Whether the session was resumed from the store after a restart.
    resumed: bool,
    /// A resumed session: the payout script of the offer it opened with, which its terms pay
    /// (the socket's offer has the next session's address by now).
    payout_script: Option<Vec<u8>>,
    /// The socket's count against the cable's meter (socket.proto "Meter agreement").
    meter: MeterCheck,
    /// The cable's meter when the session started.
    meter_base_mwh: u64,
    /// QuotaLows received while more than a quota was paid and unused.
    unfounded_quota_lows: u32,
    /// What the next receipt countersigns.
    latest: Option<Latest>,
}

impl Session {
    fn new() -> Self {
        Session {
            id: String::new(),
            paid: Amount::ZERO,
            payments: Vec::new(),
            plug_in_to_paid: None,
            drew_power: false,
            idle_since: None,
            energy_used_mwh: 0,
            seen_in_status: false,
            last_status_sequence: 0,
            onchain_txs: Vec::new(),
            resumed: false,
            payout_script: None,
            meter: MeterCheck::default(),
            meter_base_mwh: 0,
            unfounded_quota_lows: 0,
            latest: None,
        }
    }
}

/// How long a quota's payment waits for the cable's own store to work again.
const STORE_PATIENCE: Duration = Duration::from_secs(10);

fn retryable(status: &tonic::Status) -> bool {
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
        })
    }
    async fn connect(&self) -> anyhow::Result<SocketClient<Channel>> {
        // A link that drops without a word (a power-line link) leaves TCP retrying for many
        // seconds: HTTP/2 pings find it dead within ~10 s, and the cable reconnects and
        // resumes its session within the socket's grace period.
        let channel = tonic::transport::Endpoint::from_shared(self.config.socket.clone())
            .with_context(|| format!("the socket's address {}", self.config.socket))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .with_context(|| format!("no socket answers at {}", self.config.socket))?;
        Ok(SocketClient::new(channel))
    }
    /// Reach the socket again and reopen the link, until `reconnect_secs` have passed.
    async fn reconnect(
        &self,
        to: &proto::request_auth::Recipient,
    ) -> anyhow::Result<(SocketClient<Channel>, Streaming<v1::WatchStatusResponse>)> {
        let deadline = Instant::now() + Duration::from_secs(self.config.session.reconnect_secs);
        loop {
            let attempt = async {
                let mut client = self.connect().await?;
                let stream = client
                    .watch_status(self.signer.sign(
                        to,
                        v1::WatchStatusRequest {
                            outlet_id: self.config.outlet_id.clone(),
                            auth: None,
                        },
                    ))
                    .await?
                    .into_inner();
                anyhow::Ok((client, stream))
            };
            match attempt.await {
                Ok(pair) => {
                    tracing::info!("link to the socket restored");
                    return Ok(pair);
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("socket unreachable, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.context("the socket stayed unreachable")),
            }
        }
    }
    /// A new connection to the socket for calls, retried until `reconnect_secs` have passed,
    /// without a new `WatchStatus` stream: the link stays the stream the session loop reads
    /// (the socket counts the cable's newest signed stream as its presence, so a second one
    /// opened and dropped here would read as the cable leaving).
    async fn reconnect_client(&self) -> anyhow::Result<SocketClient<Channel>> {
        let deadline = Instant::now() + Duration::from_secs(self.config.session.reconnect_secs);
        loop {
            match self.connect().await {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("socket unreachable, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.context("the socket stayed unreachable")),
            }
        }
    }
    /// Plug in and run one session to its end.
    pub async fn run_session(&mut self) -> Result<SessionReport, CableError> {
        let mut client = self.connect().await?;
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
            .map_err(|reason| CableError::RefusedSocket(format!("offer: {reason}")))?;
        let offer = accepted.offer.clone();
        let socket_key = offer.socket_identity_key.to_lower_hex_string();
        if let Some(reason) = self
            .store
            .meet_socket(&socket_key)
            .context("reading the registry of sockets")?
        {
            return Err(CableError::RefusedSocket(format!(
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
                .map_err(|e| CableError::RefusedSocket(e.to_string()))?;
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
                        (client, stream) = self.reconnect(&accepted.socket).await?;
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
    /// Check a status the socket signed (design.md "Trust"): by the key of the accepted offer,
    /// about this outlet. A report of this session is kept in the store, as proof of what the
    /// socket counted. Returns `None` for a report older than the newest seen (a stream may
    /// deliver an event queued before the snapshot that follows it). Errors:
    /// [`CableError::RefusedSocket`] when the status is unsigned or its signature fails: the
    /// cable acts on nothing it cannot prove.
    fn check_status(
        &mut self,
        signed: Option<&v1::SignedStatus>,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<Option<v1::StatusReport>, CableError> {
        let signed = signed
            .ok_or_else(|| CableError::RefusedSocket("a status the socket did not sign".into()))?;
        let report = proto::identity::verify_status(
            signed,
            &accepted.socket.socket_identity_key,
            &self.config.outlet_id,
        )
        .map_err(|e| CableError::RefusedSocket(format!("status: {e}")))?;
        // A QuotaLow may carry the very report of the status before it: equal is not stale.
        if report.sequence < session.last_status_sequence {
            tracing::debug!(sequence = report.sequence, "stale status");
            return Ok(None);
        }
        session.last_status_sequence = report.sequence;
        if !session.id.is_empty() && report.session_hash == session_hash(&session.id) {
            self.store
                .record_status(&session.id, &report, signed)
                .context("storing a signed status")?;
            let cable_mwh = self.meter_now(session);
            session.latest = Some(Latest {
                signed: signed.clone(),
                report: report.clone(),
                cable_mwh,
            });
            if let Some(cable_mwh) = cable_mwh {
                self.check_count(session, &report, cable_mwh, accepted)?;
            }
        }
        Ok(Some(report))
    }

    /// React to a status: close the appliance relay once Paid, stop on Lockout, and decide
    /// whether the session is over.
    fn on_status(
        &mut self,
        status: &v1::GetStatusResponse,
        accepted: &AcceptedOffer,
        session: &mut Session,
        plugged_at: Instant,
        idle: Duration,
    ) -> Result<Option<String>, CableError> {
        let Some(report) = self.check_status(status.signed.as_ref(), accepted, session)? else {
            return Ok(None);
        };
        // Mains reaches the cable while the socket's relay is closed (the simulator's meter
        // counts only then; real hardware simply measures).
        self.hw.set_mains(status.relay_closed);
        let state = OutletState::try_from(report.state).unwrap_or(OutletState::Unspecified);
        let ours = !session.id.is_empty() && report.session_hash == session_hash(&session.id);
        tracing::debug!(
            state = state.as_str_name(),
            ours,
            power_mw = status.power_mw,
            left_mwh = report.quota_remaining_mwh,
            "status"
        );
        if ours {
            session.energy_used_mwh = report.energy_used_mwh;
            session.seen_in_status = true;
        }
        match state {
            OutletState::Paid if !self.hw.relay.is_closed() => {
                self.hw.relay.close().map_err(anyhow::Error::from)?;
                let elapsed = plugged_at.elapsed();
                session.plug_in_to_paid.get_or_insert(elapsed);
                tracing::info!(
                    after_ms = elapsed.as_millis() as u64,
                    "appliance relay closed"
                );
            }
            OutletState::Lockout => {
                self.hw.relay.open().map_err(anyhow::Error::from)?;
                return Err(CableError::SocketRefused(format!(
                    "locked out: {}",
                    status.reason
                )));
            }
            OutletState::Standby if session.seen_in_status && report.session_hash.is_empty() => {
                return Ok(Some("the socket ended the session".into()));
            }
            // Resumed after the cable stopped, and the outlet has no session: the socket ended
            // it meanwhile (a session in progress shows in every status of its outlet).
            OutletState::Standby if session.resumed && report.session_hash.is_empty() => {
                return Ok(Some(
                    "the socket ended the session while the cable was away".into(),
                ));
            }
            _ => {}
        }
        if status.power_mw > 0 {
            session.drew_power = true;
            session.idle_since = None;
        } else if session.drew_power || self.hw.relay.is_closed() {
            // Idle after drawing power: done. Idle from the start, once paid: nothing to power.
            let since = *session.idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= idle {
                return Ok(Some(
                    if session.drew_power {
                        "appliance done"
                    } else {
                        "appliance idle"
                    }
                    .into(),
                ));
            }
        }
        // Spent: nothing left, no more may be paid, and the socket has credited every quota
        // paid (a status sent while the last payment was on its way shows 0 left before the
        // credit; ending then would give up a quota paid for).
        let quotas_paid = session.paid.to_sat() / accepted.quota_amount.to_sat().max(1);
        if state == OutletState::Paid
            && report.quota_remaining_mwh == 0
            && report.payments >= quotas_paid
            && !self
                .config
                .policy
                .allows(session.paid, accepted.quota_amount)
        {
            return Ok(Some("session budget spent".into()));
        }
        Ok(None)
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
                Err(status) if retryable(&status) => {
                    tracing::warn!("PowerRequest: {}; asking again", status.message());
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    *client = self.reconnect_client().await?;
                }
                Err(status) if session.resumed && status.code() == Code::FailedPrecondition => {
                    tracing::warn!(session = %session.id, "the socket ended the session while the cable was away: {}", status.message());
                    self.finish_session(session, "ended while the cable was away");
                    *session = Session::new();
                }
                Err(status) => {
                    return Err(CableError::SocketRefused(format!(
                        "PowerRequest: {}",
                        status.message()
                    )))
                }
            }
        }
    }
    /// Ask for one quota, check the terms, and pay them (or resend what was signed for them).
    async fn pay_quota(
        &mut self,
        client: &mut SocketClient<Channel>,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<(), CableError> {
        if self
            .pay_quota_store_patient(client, accepted, session)
            .await?
        {
            return Ok(());
        }
        // The input set of those terms closed meanwhile (the socket restarted or aged it):
        // the signature is void; ask again, which starts a new set.
        match self.pay_quota_once(client, accepted, session).await? {
            true => Ok(()),
            false => Err(CableError::SocketRefused(
                "the socket keeps closing input sets".into(),
            )),
        }
    }
    /// [`Cable::pay_quota_once`], again after a failed write of the cable's own store (nothing
    /// left the cable: every signature is stored before it is sent), for up to
    /// `STORE_PATIENCE`: a store that works again lets the session go on.
    async fn pay_quota_store_patient(
        &mut self,
        client: &mut SocketClient<Channel>,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<bool, CableError> {
        let deadline = Instant::now() + STORE_PATIENCE;
        loop {
            match self.pay_quota_once(client, accepted, session).await {
                Err(CableError::Other(e))
                    if Instant::now() < deadline
                        && e.chain().any(|c| c.is::<rusqlite::Error>()) =>
                {
                    tracing::warn!("the cable's store failed, trying again: {e:#}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                done => return done,
            }
        }
    }
    /// One attempt of [`Cable::pay_quota`]; `Ok(false)` when the terms' input set closed.
    async fn pay_quota_once(
        &mut self,
        client: &mut SocketClient<Channel>,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<bool, CableError> {
        // Latency of a quota: from the cable's request to the socket's credit.
        let quota_started = Instant::now();
        if self.pay_keysend(accepted, session)? {
            return Ok(true);
        }
        let terms = self.request_terms(client, accepted, session).await?;
        if session.id.is_empty() {
            session.id = terms.session_id.clone();
            self.store
                .open_session(
                    &session.id,
                    &accepted.offer.socket_identity_key.to_lower_hex_string(),
                    &self.config.outlet_id,
                    &accepted.offer.payout_script,
                )
                .context("storing the session")?;
        } else if terms.session_id != session.id {
            return Err(CableError::RefusedSocket(format!(
                "terms for session {} while session {} is in progress",
                terms.session_id, session.id
            )));
        }
        // A resumed session's terms are checked against the offer it opened with.
        let opened_with;
        let accepted = match &session.payout_script {
            Some(script) if *script != accepted.offer.payout_script => {
                let mut offer = accepted.clone();
                offer.offer.payout_script = script.clone();
                opened_with = offer;
                &opened_with
            }
            _ => accepted,
        };
        if accepted.scheme == v1::Scheme::Lightning {
            self.pay_lightning(accepted, session, &terms, quota_started)?;
            return Ok(true);
        }
        // A payment signed before (and maybe taken) is already counted: sending it again
        // spends nothing new.
        let resend = self
            .store
            .payment(&session.id, terms.payment_id)
            .context("reading the store")?
            .is_some();
        if !resend
            && !self
                .config
                .policy
                .allows(session.paid, accepted.quota_amount)
        {
            return Err(CableError::RefusedSocket(format!(
                "paying {} more would pass the session budget of {} sat",
                accepted.quota_amount, self.config.policy.max_session_sat
            )));
        }
        let record = match self
            .store
            .payment(&session.id, terms.payment_id)
            .context("reading the store")?
        {
            Some(record) => {
                tracing::info!(
                    payment_id = terms.payment_id,
                    "sending the payment signed before again"
                );
                if accepted.scheme == v1::Scheme::Onchain {
                    // Spent for the wallet before it leaves again: the cable may have stopped
                    // between storing the signature and telling the wallet
                    // (`onchain::sign`); recording it twice changes nothing.
                    let tx = bitcoin::psbt::Psbt::deserialize(&record.psbt)
                        .context("a stored payment's PSBT")?
                        .unsigned_tx;
                    tokio::task::block_in_place(|| self.wallet.record_sent(&tx))
                        .map_err(anyhow::Error::from)?;
                }
                record
            }
            None => payer_of(accepted.scheme)
                .ok_or_else(|| {
                    CableError::RefusedSocket(format!(
                        "terms: {} is not paid with PayTransaction",
                        accepted.scheme.as_str_name()
                    ))
                })?
                .sign(self, session, &terms, accepted)?,
        };
        let reply = loop {
            let request = self.signer.sign(
                &accepted.socket,
                v1::PayTransactionRequest {
                    session_id: session.id.clone(),
                    payment_id: terms.payment_id,
                    psbt: record.psbt.clone(),
                    auth: None,
                },
            );
            match client.pay_transaction(request).await {
                Ok(reply) => break reply.into_inner(),
                Err(status) if retryable(&status) => {
                    tracing::warn!("PayTransaction: {}; resending", status.message());
                    // The socket may be waiting on its chain (or on blocks, past its limit of
                    // unconfirmed payments): do not hammer it.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    *client = self.reconnect_client().await?;
                }
                Err(status)
                    if proto::errors::reason_of(&status)
                        == Some(v1::ErrorReason::InputSetClosed) =>
                {
                    tracing::warn!(payment_id = terms.payment_id, "{}", status.message());
                    let _ = self
                        .store
                        .set_status(&session.id, terms.payment_id, "refused");
                    return Ok(false);
                }
                Err(status) => {
                    let _ = self
                        .store
                        .set_status(&session.id, terms.payment_id, "refused");
                    return Err(CableError::SocketRefused(status.message().to_owned()));
                }
            }
        };
        if reply.txid != record.txid.to_string() {
            return Err(CableError::RefusedSocket(format!(
                "the socket reports transaction {} for our payment {}",
                reply.txid, record.txid
            )));
        }
        // Bookkeeping only: the signature is stored (`signed`) and counts as committed either
        // way, so a failed write here does not stop the session.
        if let Err(e) = self
            .store
            .set_status(&session.id, terms.payment_id, "accepted")
        {
            tracing::warn!(payment_id = terms.payment_id, "storing the acceptance: {e}");
        }
        let report = PaymentReport {
            payment_id: record.payment_id,
            txid: record.txid.to_string(),
            amount_sat: record.amount.to_sat(),
            fee_sat: record.fee.to_sat(),
            vsize: record.vsize,
            latency_ms: Some(quota_started.elapsed().as_millis() as u64),
        };
        if accepted.scheme == v1::Scheme::Onchain {
            // The wallet counts it spent since it was signed (`onchain::sign`).
            session.onchain_txs.push(report.clone());
        }
        session.paid = self
            .store
            .committed(&session.id)
            .context("reading the store")?;
        session.payments.push(report);
        tracing::info!(txid = %record.txid, amount = %record.amount, fee = %record.fee, "payment accepted");
        Ok(true)
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
        let _ = self.store.end_session(&session.id, outcome);
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

/// Sync `wallet` before signing a payment, trying again each second while bitcoind does not
/// answer, for up to `patience` (`session.reconnect_secs`: bitcoind restarting is no reason to
/// give up a session). Blocking: call inside `block_in_place`.
fn sync_for_payment(
    wallet: &mut NodeWallet,
    chain: &Chain,
    patience: Duration,
) -> Result<(), wallet::WalletError> {
    let deadline = Instant::now() + patience;
    loop {
        match wallet.sync(chain) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!("bitcoind unreachable, syncing again: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}
