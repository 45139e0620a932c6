//! The running socket: its outlet with hardware, store, chain access and watchers, the tick
//! loop that drives the outlet, and the recovery done at start-up.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use bitcoin::ScriptBuf;
use hw::clock::{Clock, ScaledClock};
use hw::load::LoadProfile;
use hw::sim::SimOutlet;
use hw::{Meter, MeterReading, PlugSense, Relay};
use proto::rules::{network_to_proto, quota_amount};
use proto::units::{EnergyMwh, PowerMw, PriceMsatPerWh};
use proto::v1;
use tokio::sync::broadcast;
use wallet::chain::Chain;
use wallet::keys::NodeKeys;
use wallet::onchain::NodeWallet;

use crate::config::{HwConfig, SchemeName, SocketConfig};
use crate::outlet::{Event, Outlet, OutletParams};
use crate::seller::single_fee::OpenSet;
use crate::store::Store;

/// How often the outlet is driven, in real time.
pub const TICK: Duration = Duration::from_millis(50);
/// How often watchers get a status while nothing changes state, in ticks.
const STATUS_EVERY_TICKS: u32 = 5;
/// How often the energy of a session is saved, in ticks (a crash loses at most this much
/// metering, to the socket's cost).
const SAVE_EVERY_TICKS: u32 = 10;
/// How often a held single-fee set is checked for spent inputs and age, in ticks.
const WATCH_SET_EVERY_TICKS: u32 = 10;

/// A held single-fee set to broadcast.
struct Settle {
    session_id: String,
    index: u32,
    tx: Option<bitcoin::Transaction>,
}

struct Hardware {
    relay: Box<dyn Relay>,
    meter: Box<dyn Meter>,
    plug: Option<Box<dyn PlugSense>>,
    /// The simulator's outlet and appliance: each plug-in brings a fresh appliance.
    sim: Option<(SimOutlet, LoadProfile)>,
}

/// What the tick loop and the handlers share under one lock.
pub(crate) struct Inner {
    pub(crate) outlet: Outlet,
    hw: Hardware,
    pub(crate) last_reading: MeterReading,
    /// The single-fee input set of the session, while open.
    pub(crate) set: Option<OpenSet>,
    link_lost_at: Option<Instant>,
    ticks: u32,
}

/// A running socket node.
pub struct SocketNode {
    pub(crate) config: SocketConfig,
    pub(crate) offer: v1::GetOfferResponse,
    pub(crate) payout_script: ScriptBuf,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) store: Mutex<Store>,
    pub(crate) chain: Arc<Chain>,
    pub(crate) clock: Arc<dyn Clock>,
    events: broadcast::Sender<v1::WatchStatusResponse>,
    watchers: AtomicUsize,
    link_debounce: Duration,
    /// Serialises payments, so that checks, persistence and credit of one payment are not
    /// interleaved with another's.
    pub(crate) pay_lock: tokio::sync::Mutex<()>,
    settler: Mutex<mpsc::Sender<Settle>>,
    /// The Lightning node, when `[lightning]` is configured.
    pub(crate) ln: Option<Arc<ln::ldk_node::Node>>,
    /// The socket's spillman channel key.
    pub(crate) channel_secret: bitcoin::secp256k1::SecretKey,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SocketNode {
    /// Start the socket of `config` with its state in `data_dir`: keys and wallet (created on
    /// first start), bitcoind (network checked), store, hardware; then recover: broadcast what
    /// was persisted but not yet broadcast, and resume the open session.
    pub fn start(config: SocketConfig, data_dir: &Path) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let keys = NodeKeys::load_or_create(data_dir, config.network)?;
        let mut wallet = NodeWallet::open(data_dir, &keys)?;
        let payout = wallet.receive_address(0)?;
        let chain = Arc::new(Chain::connect(&config.chain, config.network)?);
        let store = Store::open(data_dir).context("opening the store")?;

        let (hardware, clock, link_debounce) = open_hardware(&config.hw)?;
        let ln = match &config.lightning {
            Some(lightning) => {
                let trusted = lightning
                    .trusted_peers_0conf
                    .iter()
                    .map(|id| {
                        id.parse()
                            .with_context(|| format!("lightning.trusted_peers_0conf: {id}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let settings = ln::LnSettings {
                    listen: Some(lightning.listen),
                    trusted_peers_0conf: trusted,
                    alias: lightning.alias.clone(),
                };
                Some(ln::start_node(data_dir, &keys, &config.chain, &settings)?)
            }
            None => None,
        };
        let outlet_cfg = &config.outlet;
        let offer = v1::GetOfferResponse {
            socket_identity_key: keys.identity_key().to_bytes(),
            outlet_id: outlet_cfg.id.clone(),
            network: network_to_proto(config.network) as i32,
            price_msat_per_wh: outlet_cfg.price_msat_per_wh,
            quota_mwh: outlet_cfg.quota_mwh,
            schemes: outlet_cfg
                .schemes
                .iter()
                .map(|scheme| v1::SchemeTerms {
                    scheme: scheme.to_proto() as i32,
                    min_payment_sat: outlet_cfg.min_payment_sat,
                    max_amount_sat: match scheme {
                        SchemeName::SingleFee => outlet_cfg.single_fee_max_sat,
                        SchemeName::Onchain | SchemeName::Lightning | SchemeName::Spillman => 0,
                    },
                })
                .collect(),
            payout_script: payout.script_pubkey().to_bytes(),
            lightning_node_id: ln
                .as_ref()
                .map(|n| n.node_id().serialize().to_vec())
                .unwrap_or_default(),
            lightning_address: config
                .lightning
                .as_ref()
                .map(|l| l.listen.to_string())
                .unwrap_or_default(),
            lightning_keysend: config.lightning.as_ref().is_some_and(|l| l.keysend),
            spillman: outlet_cfg.schemes.contains(&SchemeName::Spillman).then(|| {
                let terms = &outlet_cfg.spillman;
                v1::SpillmanTerms {
                    socket_channel_key: bitcoin::PublicKey::new(
                        keys.channel_secret()
                            .public_key(&bitcoin::secp256k1::Secp256k1::signing_only()),
                    )
                    .to_bytes(),
                    min_deposit_sat: terms.min_deposit_sat,
                    min_lock_blocks: terms.min_lock_blocks,
                    max_lock_blocks: terms.max_lock_blocks,
                    close_margin_blocks: terms.close_margin_blocks,
                }
            }),
        };
        let mut outlet = Outlet::new(OutletParams {
            quota_low: EnergyMwh(outlet_cfg.quota_low_mwh),
            grace_ms: outlet_cfg.grace_secs * 1_000,
            lockout_ms: outlet_cfg.lockout_secs * 1_000,
            payment_timeout_ms: outlet_cfg.payment_timeout_secs * 1_000,
        });

        rebroadcast(&store, &chain, &outlet_cfg.id)?;
        let mut hw = hardware;
        hw.relay.open().context("opening the relay")?;
        let reading = hw.meter.read().context("reading the meter")?;
        if let Some(session) = store.open_session_of(&outlet_cfg.id)? {
            tracing::info!(session = %session.id, credited = %session.credited, used = %session.energy_used, "resuming session");
            store.audit(
                &outlet_cfg.id,
                Some(&session.id),
                "resumed",
                "after restart",
            )?;
            outlet.resume(&session, clock.now_ms(), reading.energy);
        }
        let (events, _) = broadcast::channel(256);
        let (settle_tx, settle_rx) = mpsc::channel();
        let held_sets = store.open_sets()?;
        tracing::info!(
            payout = %payout,
            identity = %keys.identity_key(),
            outlet = %outlet_cfg.id,
            "socket ready"
        );
        let node = Arc::new(SocketNode {
            offer,
            payout_script: payout.script_pubkey(),
            inner: Mutex::new(Inner {
                outlet,
                hw,
                last_reading: reading,
                link_lost_at: Some(Instant::now()),
                ticks: 0,
                set: None,
            }),
            store: Mutex::new(store),
            chain,
            clock,
            events,
            watchers: AtomicUsize::new(0),
            link_debounce,
            pay_lock: tokio::sync::Mutex::new(()),
            settler: Mutex::new(settle_tx),
            ln,
            channel_secret: keys.channel_secret(),
            config,
        });
        crate::seller::spillman::rebroadcast_deposits(&node);
        if let Some(ln) = node.ln.clone() {
            let node = Arc::clone(&node);
            std::thread::Builder::new()
                .name("lightning-events".into())
                .spawn(move || loop {
                    let event = ln.wait_next_event();
                    node.on_ln_event(&event);
                    if let Err(e) = ln.event_handled() {
                        tracing::error!("Lightning event not marked handled: {e}");
                    }
                })
                .context("starting the Lightning event thread")?;
        }
        {
            let node = Arc::clone(&node);
            std::thread::Builder::new()
                .name("settler".into())
                .spawn(move || node.run_settler(settle_rx))
                .context("starting the settler")?;
        }
        // Sets held when the socket stopped are broadcast now (paper §VI: the socket must not
        // sit on them); the session's next payment starts a new set.
        for set in held_sets {
            tracing::info!(session = %set.session_id, set = set.index, "broadcasting a set held before the restart");
            node.send_settle(Settle {
                session_id: set.session_id,
                index: set.index,
                tx: set.latest,
            });
        }
        Ok(node)
    }

    fn send_settle(&self, settle: Settle) {
        let _ = lock(&self.settler).send(settle);
    }

    /// Broadcast the transaction held for `set` (on the settler thread) and forget the set.
    pub(crate) fn settle(&self, set: OpenSet) {
        self.send_settle(Settle {
            session_id: set.session_id,
            index: set.index,
            tx: set.seller.latest().cloned(),
        });
    }

    /// Handle a Lightning event: a payment received for one of our invoices is recorded, then
    /// credited. ldk-node hands an event again after a crash until it is marked handled; the
    /// record keyed by payment hash keeps that from crediting twice.
    fn on_ln_event(&self, event: &ln::ldk_node::Event) {
        use ln::ldk_node::Event;
        match event {
            Event::PaymentReceived {
                payment_hash,
                amount_msat,
                custom_records,
                ..
            } if custom_records
                .iter()
                .any(|r| r.type_num == ln::SESSION_TLV_TYPE) =>
            {
                let hash = payment_hash.to_string();
                use crate::seller::lightning::{receive_keysend, KeysendRefusal};
                match receive_keysend(self, &hash, *amount_msat, custom_records) {
                    Ok(()) => {}
                    Err(KeysendRefusal::Stray(reason)) => {
                        tracing::warn!(%hash, amount_msat, %reason, "keysend kept, not credited");
                        let _ = self.store().audit(
                            &self.config.outlet.id,
                            None,
                            "keysend-not-credited",
                            &format!("{hash}: {reason}"),
                        );
                    }
                    Err(KeysendRefusal::Cheat { session_id, reason }) => {
                        crate::seller::lock_out(self, &session_id, &reason);
                    }
                }
            }
            Event::PaymentReceived {
                payment_hash,
                amount_msat,
                ..
            } => {
                let hash = payment_hash.to_string();
                // Bound first: a store guard in the match scrutinee would live through
                // `credit`, which takes the store again.
                let received = self.store().receive_ln_payment(&hash, *amount_msat);
                match received {
                    Ok(Some((session_id, quota))) => {
                        if let Err(e) = self.credit(&session_id, quota, &hash) {
                            tracing::warn!(%hash, "payment received for a session no longer in progress: {}", e.message());
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(%hash, amount_msat, "Lightning payment not for an open invoice of ours, or short")
                    }
                    Err(e) => tracing::error!(%hash, "recording a Lightning payment: {e}"),
                }
            }
            Event::ChannelPending {
                counterparty_node_id,
                funding_txo,
                ..
            } => {
                tracing::info!(peer = %counterparty_node_id, %funding_txo, "Lightning channel pending");
            }
            Event::ChannelReady {
                counterparty_node_id,
                ..
            } => {
                tracing::info!(peer = ?counterparty_node_id, "Lightning channel ready");
            }
            Event::ChannelClosed {
                counterparty_node_id,
                reason,
                ..
            } => {
                tracing::info!(peer = ?counterparty_node_id, ?reason, "Lightning channel closed");
            }
            _ => {}
        }
    }

    /// Credit `quota` to the session in progress: Paid, relay closed.
    pub(crate) fn credit(
        &self,
        session_id: &str,
        quota: EnergyMwh,
        detail: &str,
    ) -> Result<(), tonic::Status> {
        let mut inner = self.inner();
        self.credit_locked(&mut inner, session_id, quota, detail)
    }

    /// [`SocketNode::credit`] with the outlet already locked.
    pub(crate) fn credit_locked(
        &self,
        inner: &mut Inner,
        session_id: &str,
        quota: EnergyMwh,
        detail: &str,
    ) -> Result<(), tonic::Status> {
        let events = inner
            .outlet
            .credit(session_id, quota)
            .map_err(tonic::Status::failed_precondition)?;
        self.apply(inner, events);
        tracing::info!(session = %session_id, %quota, %detail, "payment credited");
        let _ = self.store().audit(
            &self.config.outlet.id,
            Some(session_id),
            "payment-credited",
            detail,
        );
        Ok(())
    }

    /// Broadcast held sets as they are settled, and watch broadcast sets until they confirm
    /// (paper §VII.B).
    fn run_settler(&self, requests: mpsc::Receiver<Settle>) {
        let outlet_id = &self.config.outlet.id;
        loop {
            match requests.recv_timeout(Duration::from_secs(1)) {
                Ok(Settle {
                    session_id,
                    index,
                    tx: None,
                }) => {
                    let _ = self.store().close_set(&session_id, index, "empty", None);
                }
                Ok(Settle {
                    session_id,
                    index,
                    tx: Some(tx),
                }) => {
                    let (status, txid, detail) = match self.chain.broadcast(&tx) {
                        Ok(txid) => {
                            tracing::info!(session = %session_id, set = index, %txid, "input set broadcast");
                            ("broadcast", Some(txid), txid.to_string())
                        }
                        Err(e) => {
                            tracing::warn!(session = %session_id, set = index, "input set failed: {e}");
                            ("failed", None, e.to_string())
                        }
                    };
                    let store = self.store();
                    let _ = store.close_set(&session_id, index, status, txid);
                    let _ = store.audit(
                        outlet_id,
                        Some(&session_id),
                        &format!("set-{status}"),
                        &detail,
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.watch_confirmations();
                    crate::seller::spillman::close_due(self);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn watch_confirmations(&self) {
        let Ok(unconfirmed) = self.store().unconfirmed_sets() else {
            return;
        };
        for (session_id, index, txid) in unconfirmed {
            if let Ok(Some(height)) = self.chain.confirmation_height(&txid) {
                tracing::info!(session = %session_id, set = index, %txid, height, "input set confirmed");
                let store = self.store();
                let _ = store.set_confirmed(&session_id, index, height);
                let _ = store.audit(
                    &self.config.outlet.id,
                    Some(&session_id),
                    "set-confirmed",
                    &format!("{txid} at {height}"),
                );
            }
        }
    }

    /// Check the held single-fee set: broadcast it when it passed its age limit; when its inputs
    /// are spent elsewhere (the cable double-spent them), try to broadcast it and lock out.
    fn watch_set(&self, inner: &mut Inner) {
        let Some(set) = inner.set.as_ref().filter(|s| s.seller.latest().is_some()) else {
            return;
        };
        let age_limit_ms = self.config.outlet.single_fee_max_age_secs as i64 * 1_000;
        if crate::store::unix_ms() - set.opened_at_unix_ms >= age_limit_ms {
            tracing::info!(session = %set.session_id, set = set.index, "input set reached its age limit");
            let set = inner.set.take().expect("checked");
            self.settle(set);
            return;
        }
        let spent = set
            .seller
            .inputs()
            .into_iter()
            .find(|input| matches!(self.chain.unspent_value(*input), Ok(None)));
        if let Some(input) = spent {
            // Spent by the very transaction held (the cable may broadcast it at its session
            // end): the set is paid, not cheated.
            let latest = set.seller.latest().map(|tx| tx.compute_txid());
            let ours = latest.is_some_and(|txid| {
                self.chain.in_mempool(&txid).unwrap_or(false)
                    || matches!(self.chain.confirmation_height(&txid), Ok(Some(_)))
            });
            if ours {
                tracing::info!(session = %set.session_id, set = set.index, "input set broadcast by the cable");
                let set = inner.set.take().expect("checked");
                self.settle(set);
                return;
            }
            let set = inner.set.take().expect("checked");
            let reason = format!(
                "double spend: input {input} of the held payments was spent elsewhere; {} held unpaid",
                set.seller.value()
            );
            tracing::warn!(session = %set.session_id, "{reason}");
            self.settle(set);
            let events = inner.outlet.lock_out(&reason, self.clock.now_ms());
            self.apply(inner, events);
        }
    }

    pub(crate) fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// The price of one quota on chain.
    pub(crate) fn quota_amount(&self) -> bitcoin::Amount {
        quota_amount(
            PriceMsatPerWh(self.config.outlet.price_msat_per_wh),
            EnergyMwh(self.config.outlet.quota_mwh),
        )
        .expect("checked when the config was loaded")
    }

    /// Subscribe to status changes and QuotaLow; counts as a plugged-in cable on the simulator
    /// while the guard lives.
    pub(crate) fn watch(
        self: &Arc<Self>,
    ) -> (broadcast::Receiver<v1::WatchStatusResponse>, WatcherGuard) {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        (self.events.subscribe(), WatcherGuard(Arc::clone(self)))
    }

    /// Drive the outlet once: meter, plug, timers; apply the relay; store and announce events.
    pub fn tick(&self) {
        let mut inner = self.inner();
        self.tick_locked(&mut inner);
    }

    /// [`SocketNode::tick`] with the lock already held (handlers bring the outlet up to date
    /// before acting on it).
    pub(crate) fn tick_locked(&self, inner: &mut Inner) {
        let now = self.clock.now_ms();
        let reading = match inner.hw.meter.read() {
            Ok(reading) => reading,
            Err(e) => {
                tracing::error!("meter: {e}");
                let events = inner.outlet.lock_out(&format!("meter failure: {e}"), now);
                self.apply(inner, events);
                return;
            }
        };
        inner.last_reading = reading;
        let plugged = self.plugged(inner);
        if plugged && !inner.outlet.plugged() {
            if let Some((outlet, load)) = &inner.hw.sim {
                outlet.set_load(load.clone());
            }
        }
        let events = inner.outlet.tick(now, reading.energy, plugged);
        inner.ticks = inner.ticks.wrapping_add(1);
        if inner.ticks.is_multiple_of(SAVE_EVERY_TICKS) {
            if let Some(session) = inner.outlet.session() {
                if let Err(e) = self.store().save_energy(&session.id, session.used) {
                    tracing::error!("saving energy: {e}");
                }
            }
        }
        if inner.ticks.is_multiple_of(WATCH_SET_EVERY_TICKS) {
            self.watch_set(inner);
        }
        let announce = !events.is_empty() || inner.ticks.is_multiple_of(STATUS_EVERY_TICKS);
        self.apply(inner, events);
        if announce {
            let status = self.status_of(inner);
            let _ = self.events.send(v1::WatchStatusResponse {
                event: Some(v1::watch_status_response::Event::Status(status)),
            });
        }
    }

    fn plugged(&self, inner: &mut Inner) -> bool {
        if let Some(plug) = &mut inner.hw.plug {
            return plug.is_plugged().unwrap_or(false);
        }
        // Simulator: plugged while a cable holds the link, debounced against reconnects.
        if self.watchers.load(Ordering::SeqCst) > 0 {
            inner.link_lost_at = None;
            return true;
        }
        let lost = *inner.link_lost_at.get_or_insert_with(Instant::now);
        lost.elapsed() < self.link_debounce
    }

    /// Apply the outlet's events: relay, store, watchers.
    pub(crate) fn apply(&self, inner: &mut Inner, events: Vec<Event>) {
        let outlet_id = &self.config.outlet.id;
        let want_closed = inner.outlet.relay_closed();
        if inner.hw.relay.is_closed() != want_closed {
            match inner.hw.relay.set_closed(want_closed) {
                Ok(()) => tracing::info!(closed = want_closed, "relay"),
                Err(e) => tracing::error!("relay: {e}"),
            }
        }
        for event in events {
            match event {
                Event::StateChanged(state) => {
                    tracing::info!(state = state.as_str_name(), "outlet state");
                    let reason = inner
                        .outlet
                        .lockout()
                        .map(|(r, _)| r.to_owned())
                        .unwrap_or_default();
                    let _ = self
                        .store()
                        .audit(outlet_id, None, state.as_str_name(), &reason);
                }
                Event::QuotaLow(remaining) => {
                    tracing::info!(%remaining, "quota low");
                    let _ = self.events.send(v1::WatchStatusResponse {
                        event: Some(v1::watch_status_response::Event::QuotaLow(v1::QuotaLow {
                            quota_remaining_mwh: remaining.0,
                            power_mw: Self::power_of(inner).0,
                        })),
                    });
                }
                Event::SessionEnded { id, used, reason } => {
                    tracing::info!(session = %id, %used, %reason, "session ended");
                    if inner.set.as_ref().is_some_and(|s| s.session_id == id) {
                        let set = inner.set.take().expect("checked");
                        self.settle(set);
                    }
                    let store = self.store();
                    if let Err(e) = store.end_session(&id, used, &reason) {
                        tracing::error!("ending session {id}: {e}");
                    }
                    let _ = store.audit(outlet_id, Some(&id), "session-ended", &reason);
                }
            }
        }
    }

    /// Power through the outlet as last metered (nothing while the relay is open).
    fn power_of(inner: &Inner) -> PowerMw {
        if inner.hw.relay.is_closed() {
            inner.last_reading.power
        } else {
            PowerMw(0)
        }
    }

    /// The outlet's status now.
    pub(crate) fn status_of(&self, inner: &Inner) -> v1::GetStatusResponse {
        let outlet = &inner.outlet;
        let session = outlet.session();
        let (reason, lockout_remaining_secs) = match outlet.lockout() {
            Some((reason, until)) => (
                reason.to_owned(),
                until.saturating_sub(self.clock.now_ms()).div_ceil(1_000),
            ),
            None => (String::new(), 0),
        };
        let power = Self::power_of(inner);
        v1::GetStatusResponse {
            outlet_id: self.config.outlet.id.clone(),
            state: outlet.state() as i32,
            session_id: session.map(|s| s.id.clone()).unwrap_or_default(),
            energy_used_mwh: session.map_or(0, |s| s.used.0),
            quota_remaining_mwh: session.map_or(0, |s| s.remaining().0),
            power_mw: power.0,
            lockout_remaining_secs,
            reason,
            relay_closed: inner.hw.relay.is_closed(),
            payments: session.map_or(0, |s| s.payments),
        }
    }

    /// Status now and whether QuotaLow holds, for a new watcher.
    pub(crate) fn snapshot(&self) -> (v1::GetStatusResponse, Option<v1::QuotaLow>) {
        let inner = self.inner();
        let low = inner.outlet.quota_is_low().then(|| v1::QuotaLow {
            quota_remaining_mwh: inner.outlet.session().map_or(0, |s| s.remaining().0),
            power_mw: Self::power_of(&inner).0,
        });
        (self.status_of(&inner), low)
    }

    /// Run the tick loop for ever.
    pub async fn drive(self: Arc<Self>) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            let node = Arc::clone(&self);
            // Meter and relay calls may block on real hardware.
            let _ = tokio::task::spawn_blocking(move || node.tick()).await;
        }
    }
}

/// Counts a watcher while it lives.
pub(crate) struct WatcherGuard(Arc<SocketNode>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

type HardwareParts = (Hardware, Arc<dyn Clock>, Duration);

fn open_hardware(config: &HwConfig) -> anyhow::Result<HardwareParts> {
    match config {
        HwConfig::Sim {
            time_scale,
            load,
            link_debounce_ms,
        } => {
            let clock = ScaledClock::new(*time_scale)?;
            let load = load.to_profile()?;
            let outlet = SimOutlet::new(load.clone(), Arc::new(clock.clone()));
            // The appliance is behind the cable: plugged whenever the outlet asks.
            outlet.set_plugged(true);
            Ok((
                Hardware {
                    relay: Box::new(outlet.relay()),
                    meter: Box::new(outlet.meter()),
                    plug: None,
                    sim: Some((outlet, load)),
                },
                Arc::new(clock),
                Duration::from_millis(*link_debounce_ms),
            ))
        }
        #[cfg(feature = "rpi")]
        HwConfig::Rpi(rpi) => {
            let relay = hw::rpi::GpioRelay::open(rpi.relay_gpio, rpi.relay_active_low)?;
            let meter = hw::rpi::open_meter(rpi)?;
            let plug: Option<Box<dyn PlugSense>> = match rpi.plug_gpio {
                Some(pin) => Some(Box::new(hw::rpi::GpioPlugSense::open(pin)?)),
                None => None,
            };
            anyhow::ensure!(plug.is_some(), "hw.plug_gpio is required on a Raspberry Pi");
            Ok((
                Hardware {
                    relay: Box::new(relay),
                    meter: Box::new(meter),
                    plug,
                    sim: None,
                },
                Arc::new(ScaledClock::real()),
                Duration::ZERO,
            ))
        }
        #[cfg(not(feature = "rpi"))]
        HwConfig::Rpi(_) => {
            anyhow::bail!("hw kind \"rpi\" needs socket-node built with --features rpi")
        }
    }
}

/// Broadcast payments persisted before a crash but not yet broadcast; a payment bitcoind now
/// refuses (its inputs were spent meanwhile) is marked failed and not credited.
fn rebroadcast(store: &Store, chain: &Chain, outlet_id: &str) -> anyhow::Result<()> {
    for payment in store.unbroadcast_payments()? {
        let txid = payment.tx.compute_txid();
        match chain.broadcast(&payment.tx) {
            Ok(_) => {
                tracing::info!(%txid, session = %payment.session_id, "broadcast after restart");
                store.set_payment_status(&payment.session_id, payment.payment_id, "broadcast")?;
            }
            Err(e) => {
                tracing::warn!(%txid, "payment failed on rebroadcast: {e}");
                store.set_payment_status(&payment.session_id, payment.payment_id, "failed")?;
                store.audit(
                    outlet_id,
                    Some(&payment.session_id),
                    "payment-failed",
                    &e.to_string(),
                )?;
            }
        }
    }
    Ok(())
}
