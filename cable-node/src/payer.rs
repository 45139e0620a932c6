//! The plug-in flow of the cable, payer side of the `onchain` scheme (paper seed 000 §V,
//! Table I; design.md "Payment schemes").
//!
//! `GetOffer` → policy check → `WatchStatus` (plugging in opens the link) → `PowerRequest` →
//! check the terms → build the payment with the wallet → check it → persist → `PayTransaction`;
//! then a new quota on each `QuotaLow` while the appliance draws power and the budget allows.
//! The appliance relay closes only once the socket says Paid (paper §VII.A). The session ends
//! when the appliance has gone idle, when the budget is spent and the quota used, or when the
//! socket locks the cable out.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::Amount;
use hw::clock::ScaledClock;
use hw::load::LoadProfile;
use hw::sim::SimOutlet;
use hw::{PowerMw, Relay};
use proto::rules::{check_onchain_payment, check_terms, OnchainTerms};
use proto::single_fee::{value_paid, BuyerSet, SetTerms};
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
use crate::policy::AcceptedOffer;
use crate::store::{CableSet, CableStore, SignedRecord};
use ln::ldk_node::lightning_types::payment::{PaymentHash, PaymentPreimage};

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum CableError {
    /// The cable refused the socket's offer or terms: nothing was paid for them.
    #[error("refused the socket: {0}")]
    RefusedSocket(String),
    /// The socket refused a payment or locked the cable out.
    #[error("the socket refused: {0}")]
    SocketRefused(String),
    /// Anything else: wallet, chain, store, link.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
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
    ln: Option<Arc<ln::ldk_node::Node>>,
    /// Payment outcomes reported by the Lightning node, for those who wait on them.
    ln_events: Arc<crate::lightning::PaymentEvents>,
    wallet: NodeWallet,
    chain: Chain,
    store: CableStore,
    relay: Box<dyn Relay>,
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
    /// Transactions that went on chain for the session.
    onchain_txs: Vec<PaymentReport>,
    /// Whether the session was resumed from the store after a restart.
    resumed: bool,
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
            onchain_txs: Vec::new(),
            resumed: false,
        }
    }
}

fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

impl Cable {
    /// Open the cable of `data_dir` (seed, wallet and store created on first start) and connect
    /// to bitcoind.
    pub fn open(config: CableConfig, data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let keys = NodeKeys::load_or_create(data_dir, config.network)?;
        let wallet = NodeWallet::open(data_dir, &keys)?;
        let chain = Chain::connect(&config.chain, config.network)?;
        let store = CableStore::open(data_dir).context("opening the store")?;
        // In simulation the appliance relay is a simulated one; on a Pi it would be a GpioRelay.
        let appliance = SimOutlet::new(
            LoadProfile::Constant(PowerMw(0)),
            Arc::new(ScaledClock::real()),
        );
        Ok(Cable {
            config,
            data_dir: data_dir.to_owned(),
            keys,
            ln: None,
            ln_events: Arc::default(),
            wallet,
            chain,
            store,
            relay: Box::new(appliance.relay()),
        })
    }

    async fn connect(&self) -> anyhow::Result<SocketClient<Channel>> {
        SocketClient::connect(self.config.socket.clone())
            .await
            .with_context(|| format!("no socket answers at {}", self.config.socket))
    }

    /// Reach the socket again and reopen the link, until `reconnect_secs` have passed.
    async fn reconnect(
        &self,
    ) -> anyhow::Result<(SocketClient<Channel>, Streaming<v1::WatchStatusResponse>)> {
        let deadline = Instant::now() + Duration::from_secs(self.config.session.reconnect_secs);
        loop {
            let attempt = async {
                let mut client = self.connect().await?;
                let stream = client
                    .watch_status(v1::WatchStatusRequest {
                        outlet_id: self.config.outlet_id.clone(),
                    })
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

    /// Plug in and run one session to its end.
    pub async fn run_session(&mut self) -> Result<SessionReport, CableError> {
        let mut client = self.connect().await?;
        let offer = client
            .get_offer(v1::GetOfferRequest {
                outlet_id: self.config.outlet_id.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("GetOffer: {}", s.message()))?
            .into_inner();
        let accepted = self
            .config
            .policy
            .check_offer(&offer, self.config.network)
            .map_err(|reason| CableError::RefusedSocket(format!("offer: {reason}")))?;
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
            let socket =
                crate::lightning::peer_of(&offer.lightning_node_id, &offer.lightning_address)?;
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
            .watch_status(v1::WatchStatusRequest {
                outlet_id: self.config.outlet_id.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("WatchStatus: {}", s.message()))?
            .into_inner();
        let plugged_at = Instant::now();
        tracing::info!("plugged in");
        let mut session = Session::new();
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
        let socket_key = offer.socket_identity_key.to_lower_hex_string();
        if let Some((id, paid)) = self
            .store
            .unfinished_session(&self.config.outlet_id, &socket_key)
            .context("reading the store")?
        {
            tracing::info!(session = %id, %paid, "resuming the session the cable stopped in");
            session.id = id;
            session.paid = paid;
            session.resumed = true;
        }
        if accepted.scheme == v1::Scheme::Spillman && !session.id.is_empty() {
            crate::spillman::resume(&mut client, &session.id, &self.store, &mut self.wallet)
                .await?;
        }
        if accepted.scheme == v1::Scheme::Spillman && session.id.is_empty() {
            // The channel opens the session (seed 003 steps 4–11), once plugged in.
            let (id, deposit) = crate::spillman::open(
                &mut client,
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
        let result = async {
            self.pay_quota(&mut client, &accepted, &mut session).await?;
            loop {
                let message = match stream.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) | Err(_) => {
                        tracing::warn!("link to the socket lost");
                        (client, stream) = self.reconnect().await?;
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
                        if low.power_mw == 0 && low.quota_remaining_mwh == 0 && session.drew_power {
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
        // The socket's final count of the session's energy, before unplugging.
        if let Ok(status) = client
            .get_status(v1::GetStatusRequest {
                outlet_id: self.config.outlet_id.clone(),
            })
            .await
        {
            if status.get_ref().session_id == session.id {
                session.energy_used_mwh = status.get_ref().energy_used_mwh;
            }
        }
        if let Some(ln) = self.ln.take() {
            let _ = tokio::task::block_in_place(|| ln.stop());
        }
        // Unplug: open the appliance relay, drop the link.
        drop(stream);
        let _ = self.relay.open();
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
        let state = OutletState::try_from(status.state).unwrap_or(OutletState::Unspecified);
        tracing::debug!(state = state.as_str_name(), session = %status.session_id, power_mw = status.power_mw, left_mwh = status.quota_remaining_mwh, "status");
        if !session.id.is_empty() && status.session_id == session.id {
            session.energy_used_mwh = status.energy_used_mwh;
            session.seen_in_status = true;
        }
        match state {
            OutletState::Paid if !self.relay.is_closed() => {
                self.relay.close().map_err(anyhow::Error::from)?;
                let elapsed = plugged_at.elapsed();
                session.plug_in_to_paid.get_or_insert(elapsed);
                tracing::info!(
                    after_ms = elapsed.as_millis() as u64,
                    "appliance relay closed"
                );
            }
            OutletState::Lockout => {
                self.relay.open().map_err(anyhow::Error::from)?;
                return Err(CableError::SocketRefused(format!(
                    "locked out: {}",
                    status.reason
                )));
            }
            OutletState::Standby if session.seen_in_status && status.session_id.is_empty() => {
                return Ok(Some("the socket ended the session".into()));
            }
            _ => {}
        }
        if status.power_mw > 0 {
            session.drew_power = true;
            session.idle_since = None;
        } else if session.drew_power || self.relay.is_closed() {
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
        if state == OutletState::Paid
            && status.quota_remaining_mwh == 0
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
            let request = v1::PowerRequestRequest {
                outlet_id: self.config.outlet_id.clone(),
                scheme: accepted.scheme as i32,
                session_id: session.id.clone(),
                max_amount_sat: match accepted.scheme {
                    v1::Scheme::SingleFee => accepted.single_fee_max.to_sat(),
                    _ => 0,
                },
            };
            match client.power_request(request).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if retryable(&status) => {
                    *client = self.reconnect().await?.0;
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
        if self.pay_quota_once(client, accepted, session).await? {
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
                )
                .context("storing the session")?;
        } else if terms.session_id != session.id {
            return Err(CableError::RefusedSocket(format!(
                "terms for session {} while session {} is in progress",
                terms.session_id, session.id
            )));
        }
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
                record
            }
            None => match accepted.scheme {
                v1::Scheme::SingleFee => self.sign_single_fee(session, &terms, accepted)?,
                v1::Scheme::Spillman => {
                    crate::spillman::sign_payment(&self.store, &session.id, &terms, accepted)?
                }
                _ => {
                    let checked = check_terms(&accepted.offer, &terms)
                        .map_err(|e| CableError::RefusedSocket(format!("terms: {e}")))?;
                    self.sign(&session.id, terms.payment_id, &checked)?
                }
            },
        };
        let reply = loop {
            let request = v1::PayTransactionRequest {
                session_id: session.id.clone(),
                payment_id: terms.payment_id,
                psbt: record.psbt.clone(),
            };
            match client.pay_transaction(request).await {
                Ok(reply) => break reply.into_inner(),
                Err(status) if retryable(&status) => {
                    tracing::warn!("PayTransaction: {}; resending", status.message());
                    *client = self.reconnect().await?.0;
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
        self.store
            .set_status(&session.id, terms.payment_id, "accepted")
            .context("storing the acceptance")?;
        let report = PaymentReport {
            payment_id: record.payment_id,
            txid: record.txid.to_string(),
            amount_sat: record.amount.to_sat(),
            fee_sat: record.fee.to_sat(),
            vsize: record.vsize,
            latency_ms: Some(quota_started.elapsed().as_millis() as u64),
        };
        if accepted.scheme == v1::Scheme::Onchain {
            // The socket broadcast it: its change is ours to spend now.
            let psbt = bitcoin::psbt::Psbt::deserialize(&record.psbt).context("our own PSBT")?;
            tokio::task::block_in_place(|| {
                self.wallet
                    .record_sent(&psbt.extract_tx_unchecked_fee_rate())
            })
            .map_err(anyhow::Error::from)?;
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

    /// The Lightning node, started on first use (with a thread that takes its events).
    fn lightning(&mut self) -> anyhow::Result<Arc<ln::ldk_node::Node>> {
        if let Some(ln) = &self.ln {
            return Ok(Arc::clone(ln));
        }
        let settings = ln::LnSettings::default();
        let ln = ln::start_node(&self.data_dir, &self.keys, &self.config.chain, &settings)?;
        let (node, outcomes) = (Arc::clone(&ln), Arc::clone(&self.ln_events));
        std::thread::spawn(move || loop {
            let event = node.wait_next_event();
            tracing::debug!(?event, "Lightning event");
            let outcome = matches!(
                event,
                ln::ldk_node::Event::PaymentSuccessful { .. }
                    | ln::ldk_node::Event::PaymentFailed { .. }
            );
            if node.event_handled().is_err() {
                return;
            }
            if outcome {
                outcomes.notify();
            }
        });
        self.ln = Some(Arc::clone(&ln));
        Ok(ln)
    }

    /// Check a Lightning payment request and pay its invoice: exactly price × quota msat, payee
    /// the offer's node, a payment hash never paid before (unless it is this very payment, asked
    /// again: then its outcome is awaited, not paid twice). Recorded before it is sent.
    fn pay_lightning(
        &mut self,
        accepted: &AcceptedOffer,
        session: &mut Session,
        terms: &v1::PowerRequestResponse,
        started: Instant,
    ) -> Result<(), CableError> {
        let refuse = |reason: String| CableError::RefusedSocket(format!("terms: {reason}"));
        let offer = &accepted.offer;
        let expected_msat = PriceMsatPerWh(offer.price_msat_per_wh)
            .cost_of(accepted.quota)
            .map_err(|e| refuse(e.to_string()))?
            .0;
        if terms.scheme != v1::Scheme::Lightning as i32 {
            return Err(refuse(format!("scheme {} is not lightning", terms.scheme)));
        }
        if terms.quota_mwh != offer.quota_mwh || terms.amount_msat != expected_msat {
            return Err(refuse(format!(
                "{} msat for {} mWh is not price x quota = {expected_msat} msat for {} mWh",
                terms.amount_msat, terms.quota_mwh, offer.quota_mwh
            )));
        }
        let recorded = self
            .store
            .ln_payment_of(&session.id, terms.payment_id)
            .context("reading the store")?;
        if let Some((hash, status)) = &recorded {
            if status == "paid" {
                return Err(refuse(format!(
                    "payment {} was already paid (payment hash {hash})",
                    terms.payment_id
                )));
            }
        }
        // A payment being sent when the cable stopped is awaited, not paid again.
        let recorded = recorded
            .filter(|(_, status)| status == "sending")
            .map(|(hash, _)| hash);
        let store = &self.store;
        let invoice = ln::check_invoice(
            &terms.bolt11_invoice,
            &offer.lightning_node_id,
            expected_msat,
            |hash| recorded.as_deref() != Some(hash) && store.ln_hash_used(hash).unwrap_or(true),
        )
        .map_err(|e| refuse(e.to_string()))?;
        let hash = ln::payment_hash_hex(&invoice);
        if recorded.as_deref().is_some_and(|r| r != hash) {
            return Err(refuse(format!(
                "payment {} was already paid with another invoice",
                terms.payment_id
            )));
        }
        self.store
            .sending_ln(&session.id, terms.payment_id, &hash, expected_msat)
            .context("recording the payment")?;
        let ln = self.lightning()?;
        let paid = tokio::task::block_in_place(|| {
            crate::lightning::pay(&ln, &self.ln_events, &invoice, Duration::from_secs(60))
        });
        self.ln_outcome(
            session,
            terms.payment_id,
            &hash,
            expected_msat,
            started,
            paid,
        )
    }

    /// Pay the next quota by keysend (the fast path of design.md `lightning`) when the socket
    /// offers it, the policy allows it, and the session's last Lightning payment was paid (the
    /// first quota goes by invoice: it opens the session). A keysend cut short by a crash is
    /// sent again with its stored preimage. `Ok(false)`: not a keysend case, ask for terms.
    fn pay_keysend(
        &mut self,
        accepted: &AcceptedOffer,
        session: &mut Session,
    ) -> Result<bool, CableError> {
        if accepted.scheme != v1::Scheme::Lightning
            || !accepted.offer.lightning_keysend
            || !self.config.lightning.keysend
            || session.id.is_empty()
        {
            return Ok(false);
        }
        let last = self
            .store
            .last_ln_payment(&session.id)
            .context("reading the store")?;
        let offer = &accepted.offer;
        let amount_msat = PriceMsatPerWh(offer.price_msat_per_wh)
            .cost_of(accepted.quota)
            .map_err(|e| CableError::RefusedSocket(e.to_string()))?
            .0;
        let (payment_id, preimage) = match last {
            // A keysend cut short: the same one again.
            Some(last) if last.status == "sending" && last.keysend_preimage_hex.is_some() => {
                let hex = last.keysend_preimage_hex.unwrap_or_default();
                let preimage = <[u8; 32]>::from_hex(&hex).context("a stored preimage")?;
                (last.payment_id, preimage)
            }
            Some(last) if last.status == "paid" => {
                if !self
                    .config
                    .policy
                    .allows(session.paid, accepted.quota_amount)
                {
                    return Err(CableError::RefusedSocket(format!(
                        "paying {} more would pass the session budget of {} sat",
                        accepted.quota_amount, self.config.policy.max_session_sat
                    )));
                }
                let preimage: [u8; 32] = bitcoin::secp256k1::rand::random();
                let hash = PaymentHash::from(PaymentPreimage(preimage)).to_string();
                self.store
                    .sending_keysend(
                        &session.id,
                        last.payment_id + 1,
                        &hash,
                        &preimage.to_lower_hex_string(),
                        amount_msat,
                    )
                    .context("recording the keysend")?;
                (last.payment_id + 1, preimage)
            }
            _ => return Ok(false),
        };
        let hash = PaymentHash::from(PaymentPreimage(preimage)).to_string();
        let socket = crate::lightning::peer_of(&offer.lightning_node_id, &offer.lightning_address)?;
        let record = ln::SessionRecord {
            session_id: session.id.clone(),
            payment_id,
        };
        let ln = self.lightning()?;
        let started = Instant::now();
        let paid = tokio::task::block_in_place(|| {
            crate::lightning::keysend(
                &ln,
                &self.ln_events,
                socket.node_id,
                amount_msat,
                &record,
                preimage,
                Duration::from_secs(60),
            )
        });
        self.ln_outcome(session, payment_id, &hash, amount_msat, started, paid)?;
        Ok(true)
    }

    /// Record how a Lightning payment ended and report it.
    fn ln_outcome(
        &mut self,
        session: &mut Session,
        payment_id: u64,
        hash: &str,
        amount_msat: u64,
        started: Instant,
        paid: anyhow::Result<u64>,
    ) -> Result<(), CableError> {
        let fee_msat = match paid {
            Ok(fee) => fee,
            Err(e) => {
                let _ = self.store.ln_done(hash, "failed", None);
                return Err(e.into());
            }
        };
        let latency = started.elapsed().as_millis() as u64;
        self.store
            .ln_done(hash, "paid", Some(latency))
            .context("recording the payment")?;
        session.paid = self
            .store
            .committed(&session.id)
            .context("reading the store")?;
        session.payments.push(PaymentReport {
            payment_id,
            txid: hash.to_owned(),
            amount_sat: amount_msat.div_ceil(1_000),
            fee_sat: fee_msat.div_ceil(1_000),
            vsize: 0,
            latency_ms: Some(latency),
        });
        tracing::info!(payment_hash = %hash, amount_msat, latency_ms = latency, "Lightning payment sent");
        Ok(())
    }

    /// Check single-fee terms and sign them (paper seed 000 §VI, Table II): a new input set when
    /// the socket starts one, else one increment more over the set's inputs and fee. The
    /// signature is stored with the raised value before it leaves the cable.
    fn sign_single_fee(
        &mut self,
        session: &mut Session,
        terms: &v1::PowerRequestResponse,
        accepted: &AcceptedOffer,
    ) -> Result<SignedRecord, CableError> {
        let refuse = |e: proto::rules::RuleError| CableError::RefusedSocket(format!("terms: {e}"));
        if terms.scheme != v1::Scheme::SingleFee as i32 {
            return Err(refuse(proto::rules::RuleError::Scheme(terms.scheme)));
        }
        let increment = accepted.quota_amount;
        let current = self
            .store
            .current_set(&session.id)
            .context("reading the store")?;
        if terms.inputs.is_empty() {
            // The socket starts a new input set: exactly one increment, no fee fixed yet, a
            // maximum within the policy.
            let checked = check_terms(
                &accepted.offer,
                &v1::PowerRequestResponse {
                    scheme: v1::Scheme::Onchain as i32,
                    ..terms.clone()
                },
            )
            .map_err(refuse)?;
            let value = Amount::from_sat(terms.value_sat);
            if value != increment || terms.fee_sat != 0 {
                return Err(refuse(proto::rules::RuleError::Value {
                    expected: increment,
                    got: value,
                }));
            }
            let max = Amount::from_sat(terms.max_amount_sat);
            if max > accepted.single_fee_max || max < increment {
                return Err(refuse(proto::rules::RuleError::AboveMax {
                    value: max,
                    max: accepted.single_fee_max,
                }));
            }
            if let Some(old) = &current {
                self.settle_set(session, old)?;
            }
            let policy = &self.config.policy;
            let payout = checked.payout_script;
            let signed = tokio::task::block_in_place(|| {
                self.wallet.sync(&self.chain)?;
                let (inputs, fee) = self.wallet.plan_input_set(
                    &payout,
                    max,
                    policy.fee_rate(),
                    policy.max_fee(),
                )?;
                let signed = self.wallet.pay_from(&inputs, &payout, value, fee)?;
                Ok::<_, wallet::WalletError>((inputs, signed))
            })
            .map_err(anyhow::Error::from)?;
            let (mut inputs, signed) = signed;
            inputs.sort();
            Self::check_pays(&signed.tx, &payout, value)?;
            let set = CableSet {
                session_id: session.id.clone(),
                index: current.map_or(1, |s| s.index + 1),
                inputs,
                fee: signed.fee,
                max,
                increment,
                payout_script: payout,
                highest: value,
                highest_payment_id: terms.payment_id,
            };
            let record = Self::record_of(terms.payment_id, increment, &signed);
            self.store
                .open_set(&set, &record)
                .context("storing the input set")?;
            tracing::info!(set = set.index, %max, inputs = set.inputs.len(), fee = %set.fee, "input set opened");
            return Ok(record);
        }
        let set = current.ok_or_else(|| {
            CableError::RefusedSocket(
                "terms: the socket continues an input set this cable never opened".into(),
            )
        })?;
        let buyer = BuyerSet {
            terms: SetTerms {
                payout_script: set.payout_script.clone(),
                increment: set.increment,
                max: set.max,
            },
            inputs: set.inputs.clone(),
            fee: set.fee,
            highest: set.highest,
        };
        let value = buyer.check_next(terms).map_err(refuse)?;
        let signed = tokio::task::block_in_place(|| {
            self.wallet
                .pay_from(&set.inputs, &set.payout_script, value, set.fee)
        })
        .map_err(anyhow::Error::from)?;
        Self::check_pays(&signed.tx, &set.payout_script, value)?;
        let record = Self::record_of(terms.payment_id, increment, &signed);
        self.store
            .raise_set(&set, value, &record)
            .context("storing the raised value")?;
        Ok(record)
    }

    fn check_pays(
        tx: &bitcoin::Transaction,
        payout: &bitcoin::ScriptBuf,
        value: Amount,
    ) -> Result<(), CableError> {
        let paid =
            value_paid(tx, payout).map_err(|e| anyhow::anyhow!("built a wrong payment: {e}"))?;
        if paid != value {
            return Err(anyhow::anyhow!("built a payment of {paid} instead of {value}").into());
        }
        Ok(())
    }

    fn record_of(
        payment_id: u64,
        amount: Amount,
        signed: &wallet::onchain::SignedPayment,
    ) -> SignedRecord {
        SignedRecord {
            payment_id,
            txid: signed.tx.compute_txid(),
            amount,
            fee: signed.fee,
            vsize: signed.tx.vsize() as u64,
            status: "signed".into(),
            psbt: signed.psbt.serialize(),
        }
    }

    /// Close an input set by broadcasting its highest accepted transaction ourselves (the
    /// socket should have; this pays nothing more than the socket accepted, and frees our
    /// change).
    fn settle_set(&mut self, session: &mut Session, set: &CableSet) -> Result<(), CableError> {
        let payments = self
            .store
            .payments(&set.session_id)
            .context("reading the store")?;
        let highest = payments
            .iter()
            .filter(|p| p.status == "accepted")
            .filter_map(|p| {
                let tx = bitcoin::psbt::Psbt::deserialize(&p.psbt)
                    .ok()?
                    .extract_tx_unchecked_fee_rate();
                let mut inputs: Vec<_> = tx.input.iter().map(|i| i.previous_output).collect();
                inputs.sort();
                let value = value_paid(&tx, &set.payout_script).ok()?;
                (inputs == set.inputs).then_some((value, tx, p))
            })
            .max_by_key(|(value, _, _)| *value);
        if let Some((value, tx, record)) = highest {
            tokio::task::block_in_place(|| {
                self.chain.broadcast(&tx)?;
                self.wallet.record_sent(&tx)
            })
            .map_err(anyhow::Error::from)?;
            tracing::info!(set = set.index, txid = %record.txid, %value, "input set settled");
            session.onchain_txs.push(PaymentReport {
                payment_id: record.payment_id,
                txid: record.txid.to_string(),
                amount_sat: value.to_sat(),
                fee_sat: set.fee.to_sat(),
                vsize: record.vsize,
                latency_ms: None,
            });
        }
        self.store
            .close_set(&set.session_id, set.index)
            .context("closing the input set")?;
        Ok(())
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

    /// Build, check, sign and store a payment of the checked terms.
    fn sign(
        &mut self,
        session_id: &str,
        payment_id: u64,
        terms: &OnchainTerms,
    ) -> Result<SignedRecord, CableError> {
        let policy = &self.config.policy;
        let signed = tokio::task::block_in_place(|| {
            self.wallet.sync(&self.chain)?;
            self.wallet.pay(
                &terms.payout_script,
                terms.amount,
                policy.fee_rate(),
                policy.max_fee(),
            )
        })
        .map_err(anyhow::Error::from)?;
        // The same rule the socket applies: exactly the terms, in one output.
        check_onchain_payment(&signed.tx, terms)
            .map_err(|e| anyhow::anyhow!("built a wrong payment: {e}"))?;
        let record = SignedRecord {
            payment_id,
            txid: signed.tx.compute_txid(),
            amount: terms.amount,
            fee: signed.fee,
            vsize: signed.tx.vsize() as u64,
            status: "signed".into(),
            psbt: signed.psbt.serialize(),
        };
        // Durable before the signature leaves the cable.
        self.store
            .record_signed(session_id, &record)
            .context("storing the signed payment")?;
        Ok(record)
    }

    /// Take back the deposit of every spillman channel the socket left open past its refund's
    /// lock height (seed 003 "Protocol Peculiarities"). Returns the refunds broadcast.
    pub fn refund_due(&mut self) -> anyhow::Result<Vec<bitcoin::Txid>> {
        let refunded =
            tokio::task::block_in_place(|| crate::spillman::refund_due(&self.store, &self.chain))?;
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
