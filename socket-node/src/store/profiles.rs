//! Device profiles (design.md "Attestation"; seed 004 §4: "repository of device profiles"):
//! what each cable's appliance is expected to draw, declared by an operator's registry or the
//! owner (`socket-node profile`), or learned from the cable's own sessions.

use proto::registry::Profile;
use rusqlite::{params, OptionalExtension};

use super::persist;
use super::{Result, Store};

/// A cable needs this many ended sessions before its energy per session is learned.
pub const LEARN_AFTER_SESSIONS: u64 = 3;
/// A learned profile allows this many times the most energy of the cable's past sessions.
pub const LEARNED_ENERGY_FACTOR: u64 = 2;

/// The profile a session is checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionProfile {
    /// The limits.
    pub profile: Profile,
    /// Whether the energy limit was learned (a learned limit only flags; a declared one halts).
    pub energy_learned: bool,
}

impl Store {
    /// Declare the profile of cable `key_hex` now (`source` names who declared it), audited.
    pub fn set_profile(&self, key_hex: &str, profile: Profile, source: &str) -> Result<()> {
        persist("socket-set-profile", || {
            let now_secs = (super::unix_ms() / 1_000) as u64;
            let tx = self.db.unchecked_transaction()?;
            set_profile_in(&tx, key_hex, profile, source, now_secs)?;
            tx.commit()
        })
    }

    /// The declared profile of cable `key_hex`, if any.
    pub fn profile(&self, key_hex: &str) -> Result<Option<Profile>> {
        Ok(self
            .db
            .query_row(
                "SELECT profile_max_power_w, profile_max_energy_per_session_wh FROM cables
                 WHERE key_hex = ?1",
                params![key_hex],
                |r| {
                    Ok(Profile {
                        max_power_w: r.get::<_, Option<i64>>(0)?.map(|w| w as u64),
                        max_energy_per_session_wh: r.get::<_, Option<i64>>(1)?.map(|w| w as u64),
                    })
                },
            )
            .optional()?
            .filter(|p| *p != Profile::default()))
    }

    /// The profile of `session_id`'s cable: the declared one, with an energy limit learned
    /// from its past sessions when none is declared ([`LEARN_AFTER_SESSIONS`] ended sessions
    /// with energy; [`LEARNED_ENERGY_FACTOR`] times the most any used, in whole Wh).
    pub fn session_profile(&self, session_id: &str) -> Result<SessionProfile> {
        let Some(key) = self.session_cable(session_id)? else {
            return Ok(SessionProfile::default());
        };
        let mut profile = self.profile(&key)?.unwrap_or_default();
        let mut energy_learned = false;
        if profile.max_energy_per_session_wh.is_none() {
            let (sessions, most_mwh): (i64, Option<i64>) = self.db.query_row(
                "SELECT COUNT(*), MAX(energy_used_mwh) FROM sessions
                 WHERE cable_key_hex = ?1 AND ended_at_unix_ms IS NOT NULL
                   AND energy_used_mwh > 0 AND id != ?2",
                params![key, session_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if sessions as u64 >= LEARN_AFTER_SESSIONS {
                let most_wh = (most_mwh.unwrap_or(0) as u64).div_ceil(1_000);
                profile.max_energy_per_session_wh = Some(most_wh * LEARNED_ENERGY_FACTOR);
                energy_learned = true;
            }
        }
        Ok(SessionProfile {
            profile,
            energy_learned,
        })
    }
}

/// [`Store::set_profile`] inside a transaction (registry imports), declared at
/// `declared_at_unix_secs`: a profile declared later is kept (returns whether it was set).
pub(super) fn set_profile_in(
    tx: &rusqlite::Connection,
    key_hex: &str,
    profile: Profile,
    source: &str,
    declared_at_unix_secs: u64,
) -> Result<bool> {
    super::cables::ensure_cable(tx, key_hex)?;
    let changed = tx.execute(
        "UPDATE cables SET profile_max_power_w = ?2, profile_max_energy_per_session_wh = ?3,
             profile_declared_at_unix_secs = ?4
         WHERE key_hex = ?1
           AND (profile_declared_at_unix_secs IS NULL OR profile_declared_at_unix_secs <= ?4)",
        params![
            key_hex,
            profile.max_power_w.map(|w| w as i64),
            profile.max_energy_per_session_wh.map(|w| w as i64),
            declared_at_unix_secs as i64
        ],
    )?;
    if changed == 0 {
        return Ok(false);
    }
    let limit = |v: Option<u64>, unit: &str| v.map_or("none".to_owned(), |v| format!("{v} {unit}"));
    super::audit::append(
        tx,
        "",
        None,
        "profile",
        &format!(
            "cable {key_hex} by {source}: max power {}, max energy per session {}",
            limit(profile.max_power_w, "W"),
            limit(profile.max_energy_per_session_wh, "Wh")
        ),
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CABLE: &str = "02aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn session(store: &Store, id: &str, ended_energy_mwh: Option<i64>) {
        store
            .db
            .execute(
                "INSERT INTO sessions (id, outlet_id, scheme, started_at_unix_ms, cable_key_hex,
                 ended_at_unix_ms, energy_used_mwh) VALUES (?1, 'outlet-1', 'onchain', 1, ?2, ?3, ?4)",
                params![id, CABLE, ended_energy_mwh.map(|_| 2), ended_energy_mwh.unwrap_or(0)],
            )
            .unwrap();
    }

    #[test]
    fn a_declared_profile_wins_and_energy_is_learned_after_three_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        session(&store, "now", None);
        session(&store, "a", Some(9_000));
        session(&store, "b", Some(12_400));
        assert_eq!(
            store.session_profile("now").unwrap(),
            SessionProfile::default()
        );
        session(&store, "c", Some(3_000));
        // 3 sessions, the most 12.4 Wh: learned 2 x 13 Wh.
        let learned = store.session_profile("now").unwrap();
        assert!(learned.energy_learned);
        assert_eq!(learned.profile.max_energy_per_session_wh, Some(26));
        let declared = Profile {
            max_power_w: Some(1_000),
            max_energy_per_session_wh: Some(40),
        };
        store.set_profile(CABLE, declared, "the owner").unwrap();
        assert_eq!(
            store.session_profile("now").unwrap(),
            SessionProfile {
                profile: declared,
                energy_learned: false
            }
        );
        // A registry issued before the owner's declaration does not replace it.
        let tx = store.db.unchecked_transaction().unwrap();
        assert!(!set_profile_in(&tx, CABLE, Profile::default(), "an old registry", 1).unwrap());
        tx.commit().unwrap();
        assert_eq!(store.profile(CABLE).unwrap(), Some(declared));
        // Declared power only: the energy limit is still learned.
        let power_only = Profile {
            max_power_w: Some(1_000),
            max_energy_per_session_wh: None,
        };
        store.set_profile(CABLE, power_only, "the owner").unwrap();
        let mixed = store.session_profile("now").unwrap();
        assert_eq!(mixed.profile.max_power_w, Some(1_000));
        assert!(mixed.energy_learned);
    }
}
