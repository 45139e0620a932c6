//! The verification interface of seed 004 §4 on the socket (design.md "Attestation"): on every
//! meter tick, the session in progress is checked against the outlet's rating and its cable's
//! profile ([`crate::store::SessionProfile`]). Each anomaly is stored with its evidence before
//! anything else; the policy maps it to an action:
//!
//! | rule | limit | action |
//! |---|---|---|
//! | `power-above-rating` | outlet `max_power_w`, for [`OVER_POWER_MS`] | halt (lockout), flag |
//! | `power-above-profile` | the cable's declared max power, for [`OVER_POWER_MS`] | halt, flag |
//! | `energy-above-profile` | the cable's declared energy per session | halt, flag |
//! | `energy-above-profile` | an energy per session learned from its past sessions | flag |
//!
//! Elsewhere, with the same store: `payment-refused` (a payment breaking a scheme's rule: halt,
//! [`OutletTask::lock_out`]), `payment-lost` (a credited payment replaced or double-spent: the
//! cable banned for `ban_secs`, [`crate::store::Store::record_loss`]) and `meter-disagreement`
//! (a cable's receipts behind the socket's count: flag, [`crate::service`]).

use proto::units::PowerMw;

use super::OutletTask;
use crate::store::unix_ms;

/// How long (outlet clock) a session may draw above its power limit before it is an anomaly:
/// longer than an appliance's inrush.
pub const OVER_POWER_MS: u64 = 1_000;

impl OutletTask {
    /// Run every rule on the session in progress at outlet time `now` (ms).
    pub(super) fn check_rules(&mut self, now: u64) {
        let Some((session_id, used)) = self.machine.session().map(|s| (s.id.clone(), s.used))
        else {
            self.over_power_since_ms = None;
            return;
        };
        if self
            .profile
            .as_ref()
            .is_none_or(|(id, ..)| *id != session_id)
        {
            let read = {
                let store = self.shared.store();
                store.session_profile(&session_id).and_then(|profile| {
                    // Flagged before a restart: not again.
                    let flagged = store.has_anomaly(&session_id, "energy-above-profile")?;
                    Ok((profile, flagged))
                })
            };
            let (profile, flagged) = read.unwrap_or_else(|e| {
                tracing::error!(outlet = %self.config.id, "reading the cable's profile: {e}");
                Default::default()
            });
            self.profile = Some((session_id.clone(), profile, flagged));
        }
        let profile = self
            .profile
            .as_ref()
            .map(|(_, p, _)| *p)
            .unwrap_or_default();
        self.check_power(now, &session_id, used.0, profile.profile.max_power_w);
        if let Some(max_wh) = profile.profile.max_energy_per_session_wh {
            if used.0 > max_wh.saturating_mul(1_000) {
                self.over_energy(now, &session_id, used.0, max_wh, profile.energy_learned);
            }
        }
    }

    /// `power-above-rating` / `power-above-profile`: above the lower of the outlet's rating
    /// and the cable's profile for [`OVER_POWER_MS`].
    fn check_power(&mut self, now: u64, session_id: &str, used_mwh: u64, profile_w: Option<u64>) {
        let rating = self
            .config
            .max_power_w
            .map(|w| (w, "power-above-rating", "the outlet's rating"));
        let declared = profile_w.map(|w| (w, "power-above-profile", "the cable's profile"));
        let limit = match (rating, declared) {
            (Some(r), Some(d)) => Some(if d.0 < r.0 { d } else { r }),
            (r, d) => r.or(d),
        };
        let power: PowerMw = self.power();
        let Some((max_w, rule, what)) = limit.filter(|(w, ..)| power.0 > w.saturating_mul(1_000))
        else {
            self.over_power_since_ms = None;
            return;
        };
        let since = *self.over_power_since_ms.get_or_insert(now);
        if now.saturating_sub(since) < OVER_POWER_MS {
            return;
        }
        self.over_power_since_ms = None;
        let reason = format!(
            "anomaly: {:.1} W drawn for {} ms, above {what} of {max_w} W",
            power.0 as f64 / 1_000.0,
            now - since
        );
        let evidence = serde_json::json!({
            "power_mw": power.0,
            "max_power_mw": max_w.saturating_mul(1_000),
            "above_since_outlet_ms": since,
            "outlet_ms": now,
            "meter_energy_mwh": self.last_reading.energy.0,
            "session_energy_used_mwh": used_mwh,
            "time_unix_ms": unix_ms(),
        });
        self.anomaly(now, session_id, rule, true, &evidence, &reason);
    }

    /// `energy-above-profile`: the session used more than its cable's profile allows. Halted
    /// when the limit was declared; flagged once when it was learned.
    fn over_energy(
        &mut self,
        now: u64,
        session_id: &str,
        used_mwh: u64,
        max_wh: u64,
        learned: bool,
    ) {
        let rule = "energy-above-profile";
        if learned {
            // Flagged once per session, with no store query on each tick after.
            match &mut self.profile {
                Some((_, _, flagged)) if !*flagged => *flagged = true,
                _ => return,
            }
        }
        let reason = format!(
            "anomaly: {:.3} Wh used in the session, above the cable's {} {max_wh} Wh",
            used_mwh as f64 / 1_000.0,
            if learned {
                "learned energy per session of"
            } else {
                "profile of"
            }
        );
        let evidence = serde_json::json!({
            "session_energy_used_mwh": used_mwh,
            "max_energy_per_session_wh": max_wh,
            "learned": learned,
            "outlet_ms": now,
            "time_unix_ms": unix_ms(),
        });
        self.anomaly(now, session_id, rule, !learned, &evidence, &reason);
    }

    /// Store the anomaly (the cable flagged, audited), then halt the session if `halt`. A rule
    /// is recorded once per session: found again (the socket restarted after recording it,
    /// before the halt), it only halts.
    fn anomaly(
        &mut self,
        now: u64,
        session_id: &str,
        rule: &str,
        halt: bool,
        evidence: &serde_json::Value,
        reason: &str,
    ) {
        let action = if halt { "halt" } else { "flag" };
        let known = self.shared.store().has_anomaly(session_id, rule);
        if known.as_ref().is_ok_and(|known| *known) {
            if halt {
                let events = self.machine.lock_out(reason, now);
                self.apply(events);
            }
            return;
        }
        let recorded = self.shared.store().record_anomaly(
            &self.config.id,
            Some(session_id),
            rule,
            action,
            evidence,
            reason,
        );
        match recorded {
            Ok(cable) => {
                tracing::warn!(outlet = %self.config.id, session = %session_id, cable = cable.as_deref().unwrap_or(""), %reason, action, "anomaly: cable flagged")
            }
            // Halted all the same: the relay opens before anything else.
            Err(e) => tracing::error!(outlet = %self.config.id, "anomaly not stored: {e}"),
        }
        if halt {
            let events = self.machine.lock_out(reason, now);
            self.apply(events);
        }
    }
}
