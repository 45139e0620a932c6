//! The outlet state machine (paper seed 000 §III; design.md, "Outlet state machine").
//!
//! ```text
//! Standby ──payment accepted──► Paid ──more payments──► Paid
//!    ▲                           │  quota left <= quota_low: QuotaLow (once per payment)
//!    │                           │  quota used up: grace period, relay still closed
//!    ├──── unplug: settle ◄──────┤
//!    │                           ▼
//!    ├── quota used up, nothing drawn unpaid after the grace period: settle
//!    ├── quota used up past the grace period while the cable's payment is being checked or
//!    │   cannot be (bitcoind unreachable): back to Standby with the session kept, no blame
//!    └── lockout_secs ◄── Lockout (relay open) ◄── bad payment; energy drawn unpaid past the
//!                                                   grace period; no payment within the timeout
//! ```
//!
//! Pure logic: no clock, no hardware, no store. The node feeds it the outlet clock's time, the
//! meter's energy and the plug sensor, and applies what it returns. Times are ms on the outlet's
//! clock; energies are the meter's cumulative readings.

use proto::units::EnergyMwh;
use proto::v1::OutletState;

use crate::store::StoredSession;

/// Settings of one outlet's state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutletParams {
    /// `QuotaLow` when the paid energy left falls to this.
    pub quota_low: EnergyMwh,
    /// How long the relay stays closed after the quota is used up.
    pub grace_ms: u64,
    /// How long a Lockout lasts.
    pub lockout_ms: u64,
    /// How long a new session may wait for its first payment.
    pub payment_timeout_ms: u64,
}

/// A session in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub id: String,
    /// Energy paid for.
    pub credited: EnergyMwh,
    /// Energy delivered.
    pub used: EnergyMwh,
    /// Payments credited.
    pub payments: u64,
    /// Meter reading at which `used` was last brought up to date.
    meter_base: EnergyMwh,
    opened_at_ms: u64,
    exhausted_since_ms: Option<u64>,
    quota_low_sent: bool,
    /// The cable offered a payment since the last credit, which the socket is checking or could
    /// not check (its chain unavailable): not the cable's fault, so no lockout for want of
    /// payment.
    payment_offered: bool,
}

impl Session {
    /// Paid energy not yet delivered.
    pub fn remaining(&self) -> EnergyMwh {
        self.credited.saturating_sub(self.used)
    }
}

/// What the node must do after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The state changed; tell the watchers.
    StateChanged(OutletState),
    /// The paid energy left fell to the threshold.
    QuotaLow(EnergyMwh),
    /// A session ended: store it as ended with this reason and energy.
    SessionEnded {
        /// Session id.
        id: String,
        /// Energy delivered in it.
        used: EnergyMwh,
        /// Why it ended.
        reason: String,
    },
}

/// One outlet.
#[derive(Debug, Clone)]
pub struct Outlet {
    params: OutletParams,
    state: OutletState,
    plugged: bool,
    session: Option<Session>,
    lockout_until_ms: u64,
    lockout_reason: String,
}

impl Outlet {
    /// An outlet in Standby with nothing plugged in.
    pub fn new(params: OutletParams) -> Self {
        Outlet {
            params,
            state: OutletState::Standby,
            plugged: false,
            session: None,
            lockout_until_ms: 0,
            lockout_reason: String::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> OutletState {
        self.state
    }

    /// Whether a cable is plugged in (as last ticked).
    pub fn plugged(&self) -> bool {
        self.plugged
    }

    /// The session in progress.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Why the outlet is locked out, and until when (outlet clock ms).
    pub fn lockout(&self) -> Option<(&str, u64)> {
        (self.state == OutletState::Lockout)
            .then_some((&self.lockout_reason, self.lockout_until_ms))
    }

    /// Whether the relay must be closed: only while Paid and plugged in.
    pub fn relay_closed(&self) -> bool {
        self.state == OutletState::Paid && self.plugged
    }

    /// Resume a session stored before a restart: Paid if it has credit, else Standby. Energy
    /// counts on from `meter`, the new meter's reading.
    pub fn resume(&mut self, stored: &StoredSession, now_ms: u64, meter: EnergyMwh) {
        self.state = if stored.payments > 0 {
            OutletState::Paid
        } else {
            OutletState::Standby
        };
        self.session = Some(Session {
            id: stored.id.clone(),
            credited: stored.credited,
            used: stored.energy_used,
            payments: stored.payments,
            meter_base: meter,
            opened_at_ms: now_ms,
            exhausted_since_ms: None,
            quota_low_sent: false,
            payment_offered: false,
        });
    }

    /// Open a session for a cable's first `PowerRequest`. Refused (with the reason) unless the
    /// outlet is in Standby, plugged in, and has no session.
    pub fn open_session(
        &mut self,
        id: String,
        now_ms: u64,
        meter: EnergyMwh,
    ) -> Result<(), String> {
        if self.state == OutletState::Lockout {
            return Err(format!("outlet is locked out: {}", self.lockout_reason));
        }
        if !self.plugged {
            return Err("no cable is plugged in (open WatchStatus first)".into());
        }
        if let Some(session) = &self.session {
            return Err(format!("session {} is in progress", session.id));
        }
        self.session = Some(Session {
            id,
            credited: EnergyMwh::ZERO,
            used: EnergyMwh::ZERO,
            payments: 0,
            meter_base: meter,
            opened_at_ms: now_ms,
            exhausted_since_ms: None,
            quota_low_sent: false,
            payment_offered: false,
        });
        Ok(())
    }

    /// The session `id` if it is the one in progress and the outlet is not locked out.
    pub fn active_session(&mut self, id: &str) -> Result<&mut Session, String> {
        if self.state == OutletState::Lockout {
            return Err(format!("outlet is locked out: {}", self.lockout_reason));
        }
        match &mut self.session {
            Some(session) if session.id == id => Ok(session),
            Some(_) => Err(format!("session {id} is not the one in progress")),
            None => Err(format!("session {id} is not in progress")),
        }
    }

    /// End session `id` before anything was paid, with no blame (it could not open, e.g. a
    /// spillman channel the socket would not sign): back to Standby.
    pub fn abandon(&mut self, id: &str, reason: &str) -> Vec<Event> {
        match self.session.take() {
            Some(session) if session.id == id && session.payments == 0 => {
                let mut events = vec![Event::SessionEnded {
                    id: session.id,
                    used: session.used,
                    reason: reason.to_owned(),
                }];
                events.extend(self.enter(OutletState::Standby));
                events
            }
            other => {
                self.session = other;
                Vec::new()
            }
        }
    }

    /// End the session in progress `id` at its cable's request (a clean unplug): relay open,
    /// back to Standby, no blame. Errors: `id` is not the session in progress.
    pub fn end_session(&mut self, id: &str, reason: &str) -> Result<Vec<Event>, String> {
        self.active_session(id)?;
        let session = self.session.take().expect("checked");
        let mut events = vec![Event::SessionEnded {
            id: session.id,
            used: session.used,
            reason: reason.to_owned(),
        }];
        events.extend(self.enter(OutletState::Standby));
        Ok(events)
    }

    /// Credit a payment of `quota` to the session in progress: Paid, relay closed.
    pub fn credit(&mut self, session_id: &str, quota: EnergyMwh) -> Result<Vec<Event>, String> {
        let session = self.active_session(session_id)?;
        session.credited = session
            .credited
            .checked_add(quota)
            .map_err(|e| e.to_string())?;
        session.payments += 1;
        session.exhausted_since_ms = None;
        session.quota_low_sent = false;
        session.payment_offered = false;
        Ok(self.enter(OutletState::Paid))
    }

    /// The cable of session `id` offered a payment, which the socket now checks (design.md
    /// "Trust": a payment the socket cannot check, bitcoind being unreachable, is not the
    /// cable's fault). Until a credit, running out of quota or time suspends the session
    /// (Standby, relay open, session kept) instead of locking the cable out; a payment found
    /// bad locks out as ever. Ignored for a session not in progress.
    pub fn payment_offered(&mut self, id: &str) {
        if let Ok(session) = self.active_session(id) {
            session.payment_offered = true;
        }
    }

    /// The payment session `id` offered was judged and not credited (refused, or not a
    /// payment of this scheme): the session waits on the socket no more.
    pub fn payment_not_credited(&mut self, id: &str) {
        if let Ok(session) = self.active_session(id) {
            session.payment_offered = false;
        }
    }

    /// Lock the outlet out for `lockout_ms`, ending the session: a failed, invalid or missing
    /// payment (paper §III).
    pub fn lock_out(&mut self, reason: &str, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(session) = self.session.take() {
            events.push(Event::SessionEnded {
                id: session.id,
                used: session.used,
                reason: format!("lockout: {reason}"),
            });
        }
        self.lockout_reason = reason.to_owned();
        self.lockout_until_ms = now_ms + self.params.lockout_ms;
        events.extend(self.enter(OutletState::Lockout));
        events
    }

    fn enter(&mut self, state: OutletState) -> Vec<Event> {
        if self.state == state {
            return Vec::new();
        }
        self.state = state;
        if state != OutletState::Lockout {
            self.lockout_reason.clear();
        }
        vec![Event::StateChanged(state)]
    }

    /// Advance to `now_ms` with the meter's cumulative `meter` energy and the plug sensor.
    pub fn tick(&mut self, now_ms: u64, meter: EnergyMwh, plugged: bool) -> Vec<Event> {
        let mut events = Vec::new();
        self.plugged = plugged;
        if let Some(session) = &mut self.session {
            let delta = meter.saturating_sub(session.meter_base);
            session.used = EnergyMwh(session.used.0.saturating_add(delta.0));
            session.meter_base = meter;
        }
        match self.state {
            OutletState::Lockout if now_ms >= self.lockout_until_ms => {
                events.extend(self.enter(OutletState::Standby));
            }
            _ if !plugged && self.session.is_some() => {
                let session = self.session.take().expect("checked");
                events.push(Event::SessionEnded {
                    id: session.id,
                    used: session.used,
                    reason: "unplugged".into(),
                });
                events.extend(self.enter(OutletState::Standby));
            }
            OutletState::Standby => {
                let timed_out = self.session.as_ref().is_some_and(|s| {
                    s.payments == 0
                        && !s.payment_offered
                        && now_ms.saturating_sub(s.opened_at_ms) >= self.params.payment_timeout_ms
                });
                if timed_out {
                    events.extend(self.lock_out("no payment within the payment timeout", now_ms));
                }
            }
            OutletState::Paid => {
                let params = self.params.clone();
                let session = self.session.as_mut().expect("Paid has a session");
                let remaining = session.remaining();
                if remaining <= params.quota_low && !session.quota_low_sent {
                    session.quota_low_sent = true;
                    events.push(Event::QuotaLow(remaining));
                }
                if remaining == EnergyMwh::ZERO {
                    let since = *session.exhausted_since_ms.get_or_insert(now_ms);
                    if now_ms.saturating_sub(since) >= params.grace_ms {
                        if session.payment_offered {
                            // Its payment waits on our check: relay open, session kept until
                            // the payment is credited, or the cable leaves.
                            events.extend(self.enter(OutletState::Standby));
                        } else if session.used > session.credited {
                            // Energy drawn in the grace period was never paid for.
                            events.extend(self.lock_out(
                                "quota used up, energy drawn and no payment within the grace period",
                                now_ms,
                            ));
                        } else {
                            // Nothing drawn unpaid: the cable simply needs no more. Settle.
                            let session = self.session.take().expect("checked");
                            events.push(Event::SessionEnded {
                                id: session.id,
                                used: session.used,
                                reason: "quota used up, no further payment".into(),
                            });
                            events.extend(self.enter(OutletState::Standby));
                        }
                    }
                }
            }
            _ => {}
        }
        events
    }

    /// Whether `QuotaLow` holds now (for a watcher that subscribes late).
    pub fn quota_is_low(&self) -> bool {
        self.state == OutletState::Paid
            && self
                .session
                .as_ref()
                .is_some_and(|s| s.remaining() <= self.params.quota_low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlet() -> Outlet {
        Outlet::new(OutletParams {
            quota_low: EnergyMwh(1_000),
            grace_ms: 5_000,
            lockout_ms: 60_000,
            payment_timeout_ms: 10_000,
        })
    }

    fn paid_outlet() -> Outlet {
        let mut o = outlet();
        o.tick(0, EnergyMwh(0), true);
        o.open_session("s".into(), 0, EnergyMwh(0)).unwrap();
        o.credit("s", EnergyMwh(8_000)).unwrap();
        o
    }

    #[test]
    fn paying_closes_the_relay_and_the_meter_counts_down() {
        let mut o = paid_outlet();
        assert_eq!(o.state(), OutletState::Paid);
        assert!(o.relay_closed());
        assert!(o.tick(1_000, EnergyMwh(6_000), true).is_empty());
        assert_eq!(o.session().unwrap().remaining(), EnergyMwh(2_000));
        assert_eq!(
            o.tick(2_000, EnergyMwh(7_000), true),
            vec![Event::QuotaLow(EnergyMwh(1_000))]
        );
        // QuotaLow once per payment.
        assert!(o.tick(2_500, EnergyMwh(7_500), true).is_empty());
        o.credit("s", EnergyMwh(8_000)).unwrap();
        assert_eq!(o.session().unwrap().remaining(), EnergyMwh(8_500));
        assert_eq!(o.session().unwrap().payments, 2);
    }

    #[test]
    fn quota_used_up_locks_out_after_the_grace_period() {
        let mut o = paid_outlet();
        o.tick(1_000, EnergyMwh(8_000), true);
        assert!(o.relay_closed(), "grace keeps the relay closed");
        o.tick(5_999, EnergyMwh(8_500), true);
        assert_eq!(o.state(), OutletState::Paid);
        let events = o.tick(6_000, EnergyMwh(8_600), true);
        assert_eq!(o.state(), OutletState::Lockout);
        assert!(!o.relay_closed());
        assert!(
            matches!(&events[0], Event::SessionEnded { used, .. } if *used == EnergyMwh(8_600))
        );
        // Lockout lasts lockout_ms, then Standby.
        o.tick(65_999, EnergyMwh(8_600), true);
        assert_eq!(o.state(), OutletState::Lockout);
        o.tick(66_000, EnergyMwh(8_600), true);
        assert_eq!(o.state(), OutletState::Standby);
    }

    #[test]
    fn a_payment_being_checked_suspends_the_session_instead_of_locking_out() {
        let mut o = paid_outlet();
        o.payment_offered("s");
        o.tick(1_000, EnergyMwh(8_000), true);
        o.tick(6_000, EnergyMwh(8_600), true);
        assert_eq!(o.state(), OutletState::Standby, "no lockout");
        assert!(!o.relay_closed(), "no energy while unpaid");
        assert_eq!(o.session().unwrap().id, "s", "the session is kept");
        // The chain is back: the payment is credited, the session goes on.
        o.credit("s", EnergyMwh(8_000)).unwrap();
        assert_eq!(o.state(), OutletState::Paid);
        assert_eq!(o.session().unwrap().remaining(), EnergyMwh(7_400));
        // And a later shortfall without a chain wait is the cable's again.
        o.tick(7_000, EnergyMwh(16_600), true);
        o.tick(12_000, EnergyMwh(16_700), true);
        assert_eq!(o.state(), OutletState::Lockout);
        // A first payment waiting on the chain is not timed out either...
        let mut o = outlet();
        o.tick(0, EnergyMwh(0), true);
        o.open_session("t".into(), 0, EnergyMwh(0)).unwrap();
        o.payment_offered("t");
        o.tick(60_000, EnergyMwh(0), true);
        assert_eq!(o.state(), OutletState::Standby);
        assert!(o.session().is_some());
        // ...until it is judged and not credited.
        o.payment_not_credited("t");
        o.tick(60_001, EnergyMwh(0), true);
        assert_eq!(o.state(), OutletState::Lockout);
    }

    #[test]
    fn quota_used_up_with_nothing_drawn_settles_without_lockout() {
        let mut o = paid_outlet();
        o.tick(1_000, EnergyMwh(8_000), true);
        let events = o.tick(6_000, EnergyMwh(8_000), true);
        assert_eq!(o.state(), OutletState::Standby);
        assert!(!o.relay_closed());
        assert!(events.contains(&Event::SessionEnded {
            id: "s".into(),
            used: EnergyMwh(8_000),
            reason: "quota used up, no further payment".into()
        }));
    }

    #[test]
    fn unplug_settles_back_to_standby() {
        let mut o = paid_outlet();
        let events = o.tick(1_000, EnergyMwh(3_000), false);
        assert_eq!(o.state(), OutletState::Standby);
        assert!(!o.relay_closed());
        assert!(o.session().is_none());
        assert!(events.contains(&Event::SessionEnded {
            id: "s".into(),
            used: EnergyMwh(3_000),
            reason: "unplugged".into()
        }));
    }

    #[test]
    fn no_payment_within_the_timeout_locks_out() {
        let mut o = outlet();
        o.tick(0, EnergyMwh(0), true);
        o.open_session("s".into(), 0, EnergyMwh(0)).unwrap();
        o.tick(9_999, EnergyMwh(0), true);
        assert_eq!(o.state(), OutletState::Standby);
        o.tick(10_000, EnergyMwh(0), true);
        assert_eq!(o.state(), OutletState::Lockout);
    }

    #[test]
    fn sessions_need_a_plug_and_no_lockout() {
        let mut o = outlet();
        assert!(o.open_session("s".into(), 0, EnergyMwh(0)).is_err());
        o.tick(0, EnergyMwh(0), true);
        o.lock_out("bad signature", 0);
        let refused = o.open_session("s".into(), 0, EnergyMwh(0)).unwrap_err();
        assert!(refused.contains("bad signature"));
        assert!(o.credit("s", EnergyMwh(1)).is_err());
    }

    #[test]
    fn a_resumed_session_counts_from_the_new_meter() {
        let mut o = outlet();
        o.tick(0, EnergyMwh(0), true);
        // Before the restart: 8 Wh credited, 3 Wh used. The new meter starts at 0.
        o.resume(
            &StoredSession {
                id: "s".into(),
                energy_used: EnergyMwh(3_000),
                credited: EnergyMwh(8_000),
                payments: 1,
            },
            0,
            EnergyMwh(0),
        );
        o.tick(100, EnergyMwh(1_000), true);
        assert_eq!(o.session().unwrap().used, EnergyMwh(4_000));
        assert_eq!(o.state(), OutletState::Paid);
    }

    #[test]
    fn the_cable_ends_its_session_and_only_its_own() {
        let mut o = outlet();
        o.tick(0, EnergyMwh(0), true);
        o.open_session("s".into(), 0, EnergyMwh(0)).unwrap();
        o.credit("s", EnergyMwh(8_000)).unwrap();
        assert!(o.relay_closed());
        assert!(o.end_session("other", "by the cable").is_err());
        assert!(o.relay_closed());
        let events = o.end_session("s", "by the cable").unwrap();
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::SessionEnded { reason, .. } if reason == "by the cable")));
        assert_eq!(o.state(), OutletState::Standby);
        assert!(!o.relay_closed());
        assert!(o.end_session("s", "again").is_err());
    }
}
