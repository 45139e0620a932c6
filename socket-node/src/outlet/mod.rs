//! One outlet of the socket as an actor (design.md, "Architecture v2").
//!
//! - [`machine`]: the pure state machine, `Standby` / `Paid` / `Lockout` (paper §III).
//! - [`hardware`]: its relay, meter, plug sensor and clock.
//! - [`rules`]: the verification interface of seed 004 on every meter tick: power and energy
//!   against the outlet's rating and the cable's profile.
//! - [`view`]: what it shows: its [`OutletView`] and signed status.
//! - [`OutletHandle`] ([`handle`]): how the rest of the node talks to it. One tokio task per
//!   outlet owns the state machine, the hardware, the timers and the payment in flight; every
//!   other task sends it typed commands ([`command::OutletCommand`]) and never holds its state
//!   across I/O. Chain checks run before a command, outside the outlet; a slow bitcoind call
//!   for one outlet stalls no other.
//! - [`terms`]: a `PowerRequest`'s terms and an `OpenChannel`'s session, decided in the task.

pub(crate) mod command;
pub(crate) mod handle;
pub(crate) mod hardware;
pub mod machine;
#[cfg(test)]
mod machine_props;
pub(crate) mod presence;
pub(crate) mod rules;
pub(crate) mod terms;
pub(crate) mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::SocketError;
use hw::MeterReading;
use proto::units::EnergyMwh;
use proto::v1;
use tokio::sync::{broadcast, mpsc};

use crate::config::OutletConfig;
use crate::shared::Shared;
use crate::store::{unix_ms, CableAuth, Payout, SessionProfile};
use handle::Envelope;
pub use handle::{OutletHandle, Outlets};
use hardware::Hardware;
pub use machine::{Event, Outlet, OutletParams};
use presence::Presence;
use proto::Scheme;
pub use view::OutletView;

/// How often an outlet is driven, in real time.
pub const TICK: Duration = Duration::from_millis(50);
/// How often watchers get a status while nothing changes state, in ticks.
const STATUS_EVERY_TICKS: u32 = 5;
/// How often the energy of a session is noted for saving (and a held set checked for its age),
/// in ticks.
const SAVE_EVERY_TICKS: u32 = 10;

/// The longest outlet or session id, bytes (socket.proto): a longer one is refused as
/// malformed, and never echoed (a 200 KB id in an error would pass a client's header limit).
pub const MAX_ID_BYTES: usize = 64;

/// Refuse an id longer than [`MAX_ID_BYTES`]. Errors: `INVALID_ARGUMENT`, naming its length.
pub(crate) fn check_id_len(what: &str, id: &str) -> Result<(), SocketError> {
    if id.len() > MAX_ID_BYTES {
        return Err(SocketError::invalid(format!(
            "{what} of {} bytes: at most {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// The state one outlet's task owns. Only the task touches it, running the commands sent
/// with [`OutletHandle`] ([`command::OutletCommand`]).
pub(crate) struct OutletTask {
    /// The outlet's config.
    config: OutletConfig,
    /// The state machine.
    machine: Outlet,
    hw: Hardware,
    /// The meter as last read.
    last_reading: MeterReading,
    /// The payout address the outlet offers; `None` once a session bound it, until a fresh
    /// one is taken (lazily, by the next offer or session).
    payout: Option<Payout>,
    /// The session whose payment is being checked (at most one at a time: each builds on the
    /// one before).
    paying: Option<String>,
    link_lost_at: Option<Instant>,
    /// Since when (outlet clock, ms) the session draws above its power limit.
    over_power_since_ms: Option<u64>,
    /// The profile of the session in progress, read from the store once per session, and
    /// whether its learned energy limit was already found passed (flagged once per session).
    profile: Option<(String, SessionProfile, bool)>,
    ticks: u32,
    /// Sessions that ended whose end the store did not take (a failed write): written again
    /// on the next ticks, so that a store failure does not leave a session open for good.
    unstored_ends: Vec<(String, EnergyMwh, String)>,
    /// The sequence of the last signed status (`StatusReport.sequence`).
    status_sequence: u64,
    shared: Arc<Shared>,
    events: broadcast::Sender<v1::WatchStatusResponse>,
    presence: Arc<Presence>,
    /// The session in progress and its cable's identity key (hex), read from the store once
    /// per session: the cable whose presence keeps it alive.
    session_cable: Option<(String, String)>,
    stopped: bool,
}

impl OutletTask {
    /// The task of one outlet with its hardware: relay opened, meter read, the stored open
    /// session resumed (locked out at once when it has a halting anomaly).
    fn new(
        config: OutletConfig,
        shared: Arc<Shared>,
        events: broadcast::Sender<v1::WatchStatusResponse>,
        presence: Arc<Presence>,
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
                machine.resume(&session, hw.clock.now_ms(), reading.energy);
                halted = store.halting_anomaly(&session.id)?;
            }
        }
        let mut task = OutletTask {
            config,
            machine,
            hw,
            last_reading: reading,
            payout: Some(payout),
            paying: None,
            link_lost_at: Some(Instant::now()),
            over_power_since_ms: None,
            profile: None,
            ticks: 0,
            unstored_ends: Vec::new(),
            // Above every status signed before a restart, whatever the clock says.
            status_sequence: shared.status_mark.floor(),
            shared,
            events,
            presence,
            session_cable: None,
            stopped: false,
        };
        if let Some(reason) = halted {
            let now = task.hw.clock.now_ms();
            let events = task.machine.lock_out(&reason, now);
            task.apply(events);
        }
        Ok(task)
    }

    /// The task: tick every [`TICK`], run commands as they come, until stopped or every handle
    /// is gone; the relay is open when it ends.
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Envelope>) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !self.stopped {
            tokio::select! {
                _ = interval.tick() => self.tick(),
                envelope = commands.recv() => match envelope {
                    Some(Envelope { command, place }) => {
                        drop(place);
                        self.handle(command);
                    }
                    None => self.stop(),
                },
            }
        }
    }

    fn stop(&mut self) {
        if let Some(session) = self.machine.session() {
            self.shared.note_energy(&session.id, session.used);
            self.shared.save_energies();
        }
        if let Err(e) = self.hw.relay.open() {
            tracing::error!(outlet = %self.config.id, "opening the relay at stop: {e}");
        }
        self.stopped = true;
    }

    /// Drive the outlet once: meter, plug, timers; apply the relay; store and announce events.
    fn tick(&mut self) {
        if self.stopped {
            return;
        }
        let now = self.hw.clock.now_ms();
        let reading = match self.hw.meter.read() {
            Ok(reading) => reading,
            Err(e) => {
                tracing::error!(outlet = %self.config.id, "meter: {e}");
                let events = self.machine.lock_out(&format!("meter failure: {e}"), now);
                self.apply(events);
                return;
            }
        };
        self.last_reading = reading;
        let plugged = self.plugged();
        if plugged && !self.machine.plugged() {
            if let Some((outlet, load)) = &self.hw.sim {
                outlet.set_load(load.clone());
            }
        }
        let events = self.machine.tick(now, reading.energy, plugged);
        self.ticks = self.ticks.wrapping_add(1);
        if !self.unstored_ends.is_empty() && self.ticks.is_multiple_of(SAVE_EVERY_TICKS) {
            let store = self.shared.store();
            self.unstored_ends
                .retain(|(id, used, reason)| store.end_session(id, *used, reason).is_err());
        }
        if self.ticks.is_multiple_of(SAVE_EVERY_TICKS) {
            if let Some(session) = self.machine.session() {
                self.shared.note_energy(&session.id, session.used);
            }
            self.age_set();
        }
        // State changes are announced as they are applied; watchers also get a status now
        // and then while nothing changes.
        self.apply(events);
        self.check_rules(now);
        if self.ticks.is_multiple_of(STATUS_EVERY_TICKS) && self.presence.watchers() > 0 {
            let status = self.status();
            let _ = self.events.send(v1::WatchStatusResponse {
                event: Some(v1::watch_status_response::Event::Status(status)),
            });
        }
    }

    /// Whether the session's cable is plugged in: on real hardware the plug sensor must say so
    /// (an unreadable sensor says no); and, there as on the simulator, the session's own cable
    /// holds a signed stream (any stream when no session is in progress), debounced against
    /// reconnects, so that another appliance plugged into the outlet after the cable left
    /// draws nothing of its session (socket.proto `WatchStatusRequest.auth`).
    fn plugged(&mut self) -> bool {
        if let Some(plug) = &mut self.hw.plug {
            if !plug.is_plugged().unwrap_or(false) {
                return false;
            }
        }
        if self.cable_present() {
            self.link_lost_at = None;
            return true;
        }
        let lost = *self.link_lost_at.get_or_insert_with(Instant::now);
        lost.elapsed() < self.hw.link_debounce
    }

    /// The session in progress, when the cable `key` (hex) opened it.
    fn session_of_cable(&mut self, key: &str) -> Option<String> {
        self.cable_present();
        let session = self.machine.session()?.id.clone();
        match &self.session_cable {
            Some((id, own)) if *id == session && own == key => Some(session),
            _ => None,
        }
    }

    /// Why the outlet could not open a session for the cable `key` (hex) now, if it could not:
    /// locked out, nothing plugged in, or another cable's session in progress.
    fn opening_refusal(&mut self, key: &str) -> Option<String> {
        if let Some((reason, _)) = self.machine.lockout() {
            return Some(format!("outlet is locked out: {reason}"));
        }
        if !self.machine.plugged() {
            return Some("no cable is plugged in (open WatchStatus first)".into());
        }
        let session = self.machine.session().map(|s| s.id.clone())?;
        self.cable_present();
        match &self.session_cable {
            Some((id, own)) if *id == session && own == key => None,
            _ => Some("another session is in progress on this outlet".into()),
        }
    }

    /// Whether the cable of the session in progress holds a signed stream; with no session
    /// (or one stored without a cable key), whether anyone watches.
    fn cable_present(&mut self) -> bool {
        let Some(session_id) = self.machine.session().map(|s| s.id.clone()) else {
            self.session_cable = None;
            return self.presence.watchers() > 0;
        };
        if self
            .session_cable
            .as_ref()
            .is_none_or(|(id, _)| *id != session_id)
        {
            let key = self
                .shared
                .store()
                .session_cable(&session_id)
                .ok()
                .flatten();
            match key {
                Some(key) => self.session_cable = Some((session_id, key)),
                // Not stored yet, or unreadable now: judged by any watcher this tick.
                None => return self.presence.watchers() > 0,
            }
        }
        let (_, key) = self.session_cable.as_ref().expect("set above");
        self.presence.present(key)
    }

    /// The outlet clock's time now, ms.
    fn now_ms(&self) -> u64 {
        self.hw.clock.now_ms()
    }

    /// The payout address the outlet offers, taking a fresh one when the last was bound to a
    /// session. Errors: `INTERNAL` when no fresh one can be persisted.
    fn offered_payout(&mut self) -> Result<&Payout, SocketError> {
        if self.payout.is_none() {
            self.payout = Some(self.shared.fresh_payout(&self.config.id)?);
        }
        Ok(self.payout.as_ref().expect("set above"))
    }

    /// Open a session of `scheme` for `id` on the state machine and in the store, bound to the
    /// payout address the outlet offers and to the cable that signed the opening request;
    /// returns that address.
    fn open_session(
        &mut self,
        id: &str,
        scheme: Scheme,
        cable: &CableAuth,
    ) -> Result<Payout, SocketError> {
        let payout = self.offered_payout()?.clone();
        let (now, meter) = (self.now_ms(), self.last_reading.energy);
        self.machine
            .open_session(id.to_owned(), now, meter)
            .map_err(SocketError::wrong_state)?;
        if let Err(e) =
            self.shared
                .store()
                .open_session(id, &self.config.id, scheme, &payout, cable)
        {
            // Not stored: not opened.
            self.machine.abandon(id, "not stored");
            return Err(SocketError::internal(format!("storing the session: {e}")));
        }
        self.payout = None;
        // Simulator: the appliance of a new session starts its load profile afresh (a session
        // may follow an EndSession before the link's unplug debounce has passed).
        if let Some((outlet, load)) = &self.hw.sim {
            outlet.set_load(load.clone());
        }
        tracing::info!(outlet = %self.config.id, session = %id, scheme = scheme.name(), payout_index = payout.index, "session opened");
        Ok(payout)
    }

    /// Credit `quota` to the session in progress: Paid, relay closed. Refused when `session_id`
    /// is not the session in progress.
    fn credit(
        &mut self,
        session_id: &str,
        quota: EnergyMwh,
        detail: &str,
    ) -> Result<(), SocketError> {
        let events = self
            .machine
            .credit(session_id, quota)
            .map_err(SocketError::wrong_state)?;
        self.apply(events);
        tracing::info!(outlet = %self.config.id, session = %session_id, %quota, %detail, "payment credited");
        if let Err(e) = self.shared.store().audit(
            &self.config.id,
            Some(session_id),
            "payment-credited",
            detail,
        ) {
            tracing::error!("the audit log did not take a row: {e}");
        }
        Ok(())
    }

    /// Lock the outlet out for a refused payment of `session_id` and record why; only when
    /// that session is the one in progress (a request about another session locks nothing).
    /// Returns whether it locked out.
    fn lock_out(&mut self, session_id: &str, reason: &str) -> bool {
        if self.machine.session().is_none_or(|s| s.id != session_id) {
            tracing::warn!(outlet = %self.config.id, session = %session_id, %reason, "refused; not the session in progress, no lockout");
            return false;
        }
        tracing::warn!(outlet = %self.config.id, session = %session_id, %reason, "payment refused: lockout");
        // The rule `payment-refused` (design.md "Attestation"): stored, the cable flagged.
        let evidence = serde_json::json!({ "reason": reason, "time_unix_ms": unix_ms() });
        if let Err(e) = self.shared.store().record_anomaly(
            &self.config.id,
            Some(session_id),
            "payment-refused",
            "halt",
            &evidence,
            reason,
        ) {
            tracing::error!(outlet = %self.config.id, "anomaly not stored: {e}; locking out");
        }
        let events = self.machine.lock_out(reason, self.now_ms());
        self.apply(events);
        true
    }

    /// End session `id` at its cable's request (authenticated by the caller): relay open, what
    /// was paid settles. Returns the energy delivered. Errors: `FAILED_PRECONDITION` when `id`
    /// is not the session in progress.
    fn end_session(&mut self, id: &str) -> Result<EnergyMwh, SocketError> {
        let used = self
            .machine
            .session()
            .filter(|s| s.id == id)
            .map(|s| s.used)
            .unwrap_or_default();
        let events = self
            .machine
            .end_session(id, "ended by the cable")
            .map_err(SocketError::wrong_state)?;
        self.apply(events);
        Ok(used)
    }

    /// End session `id` before anything was paid, with no blame.
    fn abandon(&mut self, id: &str, reason: &str) {
        let events = self.machine.abandon(id, reason);
        self.apply(events);
    }

    /// A held single-fee set past its age limit is broadcast (paper §VI: the socket must not
    /// sit on it); the next payment starts a new set.
    fn age_set(&mut self) {
        let limit_ms = self.config.single_fee_max_age_secs as i64 * 1_000;
        let aged = self.shared.sets.take_if(&self.config.id, |set| {
            set.seller.latest().is_some() && unix_ms() - set.opened_at_unix_ms >= limit_ms
        });
        if let Some(set) = aged {
            tracing::info!(outlet = %self.config.id, session = %set.session_id, set = set.index, "input set reached its age limit");
            self.shared.settle(set);
        }
    }

    /// Apply the state machine's events: relay, store, watchers.
    fn apply(&mut self, events: Vec<Event>) {
        let outlet_id = self.config.id.clone();
        let want_closed = self.machine.relay_closed();
        if self.hw.relay.is_closed() != want_closed {
            match self.hw.relay.set_closed(want_closed) {
                Ok(()) => tracing::info!(outlet = %outlet_id, closed = want_closed, "relay"),
                Err(e) => tracing::error!(outlet = %outlet_id, "relay: {e}"),
            }
        }
        for event in events {
            match event {
                Event::StateChanged(state) => {
                    tracing::info!(outlet = %outlet_id, state = state.as_str_name(), "outlet state");
                    let reason = self
                        .machine
                        .lockout()
                        .map(|(r, _)| r.to_owned())
                        .unwrap_or_default();
                    let store = self.shared.store();
                    if let Err(e) = store.audit(&outlet_id, None, state.as_str_name(), &reason) {
                        tracing::error!(outlet = %outlet_id, "the audit log did not take a row: {e}");
                    }
                    drop(store);
                    let status = self.status();
                    let _ = self.events.send(v1::WatchStatusResponse {
                        event: Some(v1::watch_status_response::Event::Status(status)),
                    });
                }
                Event::QuotaLow(remaining) => {
                    tracing::info!(outlet = %outlet_id, %remaining, "quota low");
                    let signed = self.status().signed;
                    let _ = self.events.send(v1::WatchStatusResponse {
                        event: Some(v1::watch_status_response::Event::QuotaLow(v1::QuotaLow {
                            quota_remaining_mwh: remaining.0,
                            power_mw: self.power().0,
                            signed,
                        })),
                    });
                }
                Event::SessionEnded { id, used, reason } => {
                    tracing::info!(outlet = %outlet_id, session = %id, %used, %reason, "session ended");
                    if self.paying.as_deref() == Some(id.as_str()) {
                        self.paying = None;
                    }
                    // The set's lock is taken before the store's: a payment being held into
                    // it is held before it closes, or finds it closed.
                    let set = self.shared.sets.take_if(&outlet_id, |s| s.session_id == id);
                    if let Some(set) = set {
                        self.shared.settle(set);
                    }
                    let store = self.shared.store();
                    if let Err(e) = store.end_session(&id, used, &reason) {
                        tracing::error!(outlet = %outlet_id, "ending session {id} (written again shortly): {e}");
                        self.unstored_ends.push((id.clone(), used, reason.clone()));
                    }
                    if let Err(e) = store.audit(&outlet_id, Some(&id), "session-ended", &reason) {
                        tracing::error!("the audit log did not take a row: {e}");
                    }
                }
            }
        }
    }
}
