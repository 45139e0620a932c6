//! How the rest of the node talks to an outlet: [`OutletHandle`] sends commands to the
//! outlet's task and waits for their replies; [`Outlets`] holds every outlet's handle by id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use proto::units::EnergyMwh;
use proto::v1;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::hardware::Hardware;
use super::presence::{Presence, PresenceGuard};
use super::{check_id_len, Outlet, OutletParams, OutletTask, OutletView};
use crate::config::OutletConfig;
use crate::error::SocketError;
use crate::shared::Shared;

/// The outlets of a socket, by id.
pub struct Outlets(BTreeMap<String, OutletHandle>);

impl Outlets {
    /// The outlets of `handles`, by id.
    pub(crate) fn new(handles: BTreeMap<String, OutletHandle>) -> Self {
        Outlets(handles)
    }

    /// The outlet `id`. Errors: `NOT_FOUND`.
    pub fn get(&self, id: &str) -> Result<&OutletHandle, SocketError> {
        check_id_len("outlet id", id)?;
        self.0
            .get(id)
            .ok_or_else(|| SocketError::not_found(format!("no outlet {id:?} here")))
    }

    /// The outlet a stored session belongs to. Errors: `NOT_FOUND` for an unknown session,
    /// `INVALID_ARGUMENT` for an id longer than [`MAX_ID_BYTES`].
    pub(crate) fn of_session(
        &self,
        shared: &Shared,
        session_id: &str,
    ) -> Result<&OutletHandle, SocketError> {
        check_id_len("session id", session_id)?;
        let outlet_id = shared
            .store()
            .session_outlet(session_id)
            .map_err(SocketError::internal)?
            .ok_or_else(|| SocketError::not_found(format!("no session {session_id:?} here")))?;
        self.get(&outlet_id)
    }

    /// Every outlet, by id.
    pub fn iter(&self) -> impl Iterator<Item = &OutletHandle> {
        self.0.values()
    }

    /// How many outlets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A command: a closure run by the outlet's task on its state.
pub(super) type Command = Box<dyn FnOnce(&mut OutletTask) + Send>;

/// Calls of the cable-facing server that may wait for one outlet at once; reads are refused
/// from half of it ([`OutletHandle::read`]). The settler's and Lightning's calls are not
/// counted: they are the socket's own, few, and must not be refused.
const QUEUE_LIMIT: usize = 256;

/// A running outlet: its config and offer, and the channel to its task.
pub struct OutletHandle {
    /// The outlet's config.
    pub config: OutletConfig,
    /// Its offer, but for the payout script and nonce (filled in per request).
    offer: v1::Offer,
    events: broadcast::Sender<v1::WatchStatusResponse>,
    presence: Arc<Presence>,
    commands: mpsc::UnboundedSender<Command>,
    /// Calls from the cable-facing server queued and not yet run ([`QUEUE_LIMIT`]).
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl OutletHandle {
    /// Start the task of one outlet (on the current tokio runtime) with its hardware: relay
    /// opened, meter read, the stored open session resumed.
    pub(crate) fn spawn(
        config: OutletConfig,
        offer: v1::Offer,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut hw = Hardware::open(&config.hw)
            .with_context(|| format!("outlet {}: opening its hardware", config.id))?;
        hw.relay
            .open()
            .with_context(|| format!("outlet {}: opening the relay", config.id))?;
        let reading = hw
            .meter
            .read()
            .with_context(|| format!("outlet {}: reading the meter", config.id))?;
        let clock = Arc::clone(&hw.clock);
        let mut machine = Outlet::new(OutletParams {
            quota_low: EnergyMwh(config.quota_low_mwh),
            grace_ms: config.grace_secs * 1_000,
            lockout_ms: config.lockout_secs * 1_000,
            payment_timeout_ms: config.payment_timeout_secs * 1_000,
        });
        let offered = shared.store().offered_payout(&config.id)?;
        let payout = match offered {
            Some(payout) => payout,
            None => shared.fresh_payout(&config.id)?,
        };
        // A session with a halting anomaly (the socket stopped between recording it and the
        // lockout) is resumed only to be locked out at once.
        let mut halted = None;
        {
            let store = shared.store();
            if let Some(session) = store.open_session_of(&config.id)? {
                tracing::info!(outlet = %config.id, session = %session.id, credited = %session.credited, used = %session.energy_used, "resuming session");
                store.audit(&config.id, Some(&session.id), "resumed", "after restart")?;
                machine.resume(&session, clock.now_ms(), reading.energy);
                halted = store.halting_anomaly(&session.id)?;
            }
        }
        let (events, _) = broadcast::channel(256);
        let presence = Arc::new(Presence::default());
        let (commands, receiver) = mpsc::unbounded_channel();
        let mut task = OutletTask {
            config: config.clone(),
            machine,
            hw,
            last_reading: reading,
            set: None,
            payout: Some(payout),
            paying: false,
            link_lost_at: Some(Instant::now()),
            over_power_since_ms: None,
            profile: None,
            ticks: 0,
            unstored_ends: Vec::new(),
            // Above every status signed before a restart, whatever the clock says.
            status_sequence: shared.status_mark.floor(),
            shared,
            events: events.clone(),
            presence: Arc::clone(&presence),
            session_cable: None,
            stopped: false,
        };
        if let Some(reason) = halted {
            let now = task.hw.clock.now_ms();
            let events = task.machine.lock_out(&reason, now);
            task.apply(events);
        }
        tokio::spawn(task.run(receiver));
        Ok(OutletHandle {
            config,
            offer,
            events,
            presence,
            commands,
            queued: Arc::default(),
        })
    }

    /// The outlet's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Run `f` on the outlet's state, in its task, brought up to date first (meter, plug,
    /// timers). Errors: `UNAVAILABLE` when the outlet has stopped, or has [`QUEUE_LIMIT`] calls
    /// waiting (nothing changed: ask again).
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut OutletTask) -> R + Send + 'static,
    ) -> Result<R, SocketError> {
        self.call_within(QUEUE_LIMIT, f).await
    }

    /// [`OutletHandle::call`] for a call that only reads (a status): shed first, once half of
    /// [`QUEUE_LIMIT`] calls wait, so that a flood of reads cannot delay a payment past its
    /// grace period. Errors: `RESOURCE_EXHAUSTED` then.
    pub(crate) async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut OutletTask) -> R + Send + 'static,
    ) -> Result<R, SocketError> {
        use std::sync::atomic::Ordering;
        if self.queued.load(Ordering::SeqCst) >= QUEUE_LIMIT / 2 {
            return Err(SocketError::RateLimited(format!(
                "outlet {} is busy; ask for its status again later",
                self.config.id
            )));
        }
        self.call_within(QUEUE_LIMIT, f).await
    }

    async fn call_within<R: Send + 'static>(
        &self,
        limit: usize,
        f: impl FnOnce(&mut OutletTask) -> R + Send + 'static,
    ) -> Result<R, SocketError> {
        use std::sync::atomic::Ordering;
        if self.queued.fetch_add(1, Ordering::SeqCst) >= limit {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SocketError::unavailable(format!(
                "outlet {} has {limit} calls waiting; ask again",
                self.config.id
            )));
        }
        /// Gives the call's place in the queue back however it ends (run, or dropped).
        struct Place(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Place {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let place = Place(Arc::clone(&self.queued));
        let (reply, answer) = oneshot::channel();
        self.send(
            move |task| {
                drop(place);
                f(task)
            },
            reply,
        )?;
        answer.await.map_err(|_| stopped())
    }

    /// [`OutletHandle::call`] from a thread outside the runtime (the settler, Lightning events).
    pub(crate) fn call_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut OutletTask) -> R + Send + 'static,
    ) -> Result<R, SocketError> {
        let (reply, answer) = oneshot::channel();
        self.send(f, reply)?;
        answer.blocking_recv().map_err(|_| stopped())
    }

    fn send<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut OutletTask) -> R + Send + 'static,
        reply: oneshot::Sender<R>,
    ) -> Result<(), SocketError> {
        self.commands
            .send(Box::new(move |task: &mut OutletTask| {
                task.tick();
                let _ = reply.send(f(task));
            }))
            .map_err(|_| stopped())
    }

    /// The offer now, answering `cable_nonce`: the outlet's terms and the payout address it
    /// offers (signed by the caller).
    pub(crate) async fn offer(&self, cable_nonce: Vec<u8>) -> Result<v1::Offer, SocketError> {
        let (payout, channel_key) = self
            .call(|task| {
                let payout = task.offered_payout()?.clone();
                let key = task.shared().spillman_key(payout.index);
                Ok::<_, SocketError>((payout, key))
            })
            .await??;
        let mut offer = v1::Offer {
            payout_script: payout.script.to_bytes(),
            cable_nonce,
            ..self.offer.clone()
        };
        // A spillman channel opened on this offer uses the key of the same index.
        for entry in &mut offer.schemes {
            if let Some(v1::scheme_terms::Terms::Spillman(terms)) = &mut entry.terms {
                terms.socket_channel_key = channel_key.to_bytes();
            }
        }
        Ok(offer)
    }

    /// Subscribe to status changes and QuotaLow while the guard lives: a watcher, and the
    /// presence of `cable` (identity key hex, sequence) when the stream was signed
    /// ([`presence`]). Errors: `UNAUTHENTICATED` for a replayed signed request.
    pub(crate) fn watch(
        &self,
        cable: Option<(String, u64)>,
    ) -> Result<(broadcast::Receiver<v1::WatchStatusResponse>, PresenceGuard), SocketError> {
        let guard = self.presence.watch(cable)?;
        Ok((self.events.subscribe(), guard))
    }

    /// Status now and whether QuotaLow holds, for a new watcher or `GetStatus` (a read: shed
    /// first when the outlet is busy, [`OutletHandle::read`]).
    pub(crate) async fn snapshot(
        &self,
    ) -> Result<(v1::GetStatusResponse, Option<v1::QuotaLow>), SocketError> {
        self.read(|task| {
            let status = task.status();
            let low = task.machine.quota_is_low().then(|| v1::QuotaLow {
                quota_remaining_mwh: status.quota_remaining_mwh,
                power_mw: status.power_mw,
                signed: status.signed.clone(),
            });
            (status, low)
        })
        .await
    }

    /// The outlet as its owner sees it now ([`OutletView`]). Errors: `UNAVAILABLE` when the
    /// outlet has stopped.
    pub async fn view(&self) -> Result<OutletView, SocketError> {
        self.call(|task| task.view()).await
    }

    /// Run `f` on the outlet's state without waiting for it (for guards that cannot await).
    pub(crate) fn post(&self, f: impl FnOnce(&mut OutletTask) + Send + 'static) {
        let _ = self.commands.send(Box::new(f));
    }

    /// Open the relay and stop the task (shutdown). Waits until the relay is open.
    pub(crate) async fn stop(&self) {
        let _ = self.call(|task| task.stop()).await;
    }
}

fn stopped() -> SocketError {
    SocketError::unavailable("the outlet has stopped")
}
