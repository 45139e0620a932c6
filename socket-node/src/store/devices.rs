//! The cable identities the socket has seen (devices, design.md "Trust"): what each did and
//! whether it may open sessions, listed page by page; the owner's revocations, and operators'
//! signed registries imported and exported.

use proto::registry::EntryStatus;
use rusqlite::params;
use serde::Serialize;

use super::persist;
use super::report::{u, SESSION_REVENUE};
use super::{unix_ms, Result, Store};

/// A device as `registry export` signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRow {
    /// Its identity key, hex.
    pub key_hex: String,
    /// Revoked, flagged, or allowed (with a profile).
    pub status: proto::registry::EntryStatus,
    /// Why revoked or flagged.
    pub reason: String,
    /// Its declared profile.
    pub profile: Option<proto::registry::Profile>,
}

/// Whether a cable identity may open sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// It may.
    Allowed,
    /// It may, but a rule found an anomaly in one of its sessions (the session was halted).
    Flagged,
    /// Refused until a time, or for good (`ban_secs` unset): it made the socket lose a payment
    /// (a payment of its own replaced by a named transaction).
    Banned,
    /// Refused for good by an operator: here (`revoke`), or in an imported registry.
    Revoked,
}

/// Which devices [`Store::devices`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePage<'a> {
    /// The `limit` most recently seen (a session opened, or first seen), most recent first:
    /// what the dashboard shows.
    Recent {
        /// At most this many.
        limit: u32,
    },
    /// Up to `limit` in the order of their keys (compressed, lower-case hex), after
    /// `after_key_hex` (`None`: from the first): a complete listing page by page, stable while
    /// devices are added.
    ByKey {
        /// The last key of the previous page.
        after_key_hex: Option<&'a str>,
        /// At most this many.
        limit: u32,
    },
}

/// A cable identity the socket has seen (a device), with what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRow {
    /// Its identity key (compressed, hex).
    pub key_hex: String,
    /// Its role (`cable`).
    pub role: &'static str,
    /// First seen, Unix ms.
    pub first_seen_unix_ms: i64,
    /// Sessions it opened.
    pub sessions: u64,
    /// Energy those sessions used, mWh.
    pub energy_used_mwh: u64,
    /// Revenue credited from it, msat.
    pub revenue_msat: u64,
    /// Requests of its refused (channels the socket would not sign).
    pub refusals: u64,
    /// What it made the socket lose, sat.
    pub lost_sat: u64,
    /// Anomalies found in its sessions.
    pub anomalies: u64,
    /// Allowed, flagged, banned or revoked.
    pub status: DeviceStatus,
    /// Why it is flagged, banned or revoked.
    pub reason: Option<String>,
    /// Since when, Unix ms.
    pub since_unix_ms: Option<i64>,
    /// Banned until, Unix ms.
    pub until_unix_ms: Option<i64>,
}

/// Revoke `key_hex` for good with `banned_reason` inside the caller's transaction, audited;
/// its sessions still open, with their outlets.
/// How the reason of an operator's revocation begins (`revoke`, a registry import): what tells
/// it from a ban for a loss, which has no end either when `ban_secs` is unset.
const REVOKED_PREFIX: &str = "revoked by";

fn revoke_in(
    tx: &rusqlite::Connection,
    key_hex: &str,
    banned_reason: &str,
) -> Result<Vec<(String, String)>> {
    super::cables::ensure_cable(tx, key_hex)?;
    tx.execute(
        "UPDATE cables SET banned_reason = ?2, banned_at_unix_ms = ?3,
             banned_until_unix_ms = NULL WHERE key_hex = ?1",
        params![key_hex, banned_reason, unix_ms()],
    )?;
    super::audit::append(
        tx,
        "",
        None,
        "revoked",
        &format!("cable {key_hex}: {banned_reason}"),
    )?;
    let mut statement = tx.prepare(
        "SELECT id, outlet_id FROM sessions WHERE cable_key_hex = ?1 AND ended_at_unix_ms IS NULL",
    )?;
    let rows = statement.query_map(params![key_hex], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

impl Store {
    /// The cable identities seen, with their sessions and status: one page of them, as `page`
    /// says.
    pub fn devices(&self, page: DevicePage<'_>) -> Result<Vec<DeviceRow>> {
        let now = unix_ms();
        let (after, order, limit) = match page {
            DevicePage::Recent { limit } => (None, "seen DESC, c.key_hex", limit),
            DevicePage::ByKey {
                after_key_hex,
                limit,
            } => (after_key_hex, "c.key_hex", limit),
        };
        let mut statement = self.db.prepare(&format!(
            "SELECT c.key_hex, c.first_seen_unix_ms, COUNT(s.id), COALESCE(SUM(s.energy_used_mwh), 0),
                    COALESCE(SUM(r.revenue_msat), 0), c.refusals, c.lost_sat, c.banned_reason,
                    c.banned_at_unix_ms, c.banned_until_unix_ms,
                    MAX(c.first_seen_unix_ms, COALESCE(MAX(s.started_at_unix_ms), 0)) AS seen,
                    c.anomalies, c.flagged_reason, c.flagged_at_unix_ms
             FROM cables c
             LEFT JOIN sessions s ON s.cable_key_hex = c.key_hex
             LEFT JOIN ({SESSION_REVENUE}) r ON r.session_id = s.id
             WHERE ?1 IS NULL OR c.key_hex > ?1
             GROUP BY c.key_hex ORDER BY {order} LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![after, limit], |r| {
            let banned: Option<String> = r.get(7)?;
            let until: Option<i64> = r.get(9)?;
            let flagged: Option<String> = r.get(12)?;
            let revoked = banned
                .as_deref()
                .is_some_and(|b| b.starts_with(REVOKED_PREFIX));
            let (status, reason, since) = match (&banned, until) {
                (Some(_), None) if revoked => (DeviceStatus::Revoked, banned, r.get(8)?),
                (Some(_), None) => (DeviceStatus::Banned, banned, r.get(8)?),
                (Some(_), Some(until)) if until > now => (DeviceStatus::Banned, banned, r.get(8)?),
                _ if flagged.is_some() => (DeviceStatus::Flagged, flagged, r.get(13)?),
                _ => (DeviceStatus::Allowed, None, None),
            };
            Ok(DeviceRow {
                key_hex: r.get(0)?,
                role: "cable",
                first_seen_unix_ms: r.get(1)?,
                sessions: u(r.get(2)?),
                energy_used_mwh: u(r.get(3)?),
                revenue_msat: u(r.get(4)?),
                refusals: u(r.get(5)?),
                lost_sat: u(r.get(6)?),
                anomalies: u(r.get(11)?),
                status,
                reason,
                since_unix_ms: since,
                until_unix_ms: until.filter(|_| status == DeviceStatus::Banned),
            })
        })?;
        rows.collect()
    }

    /// Revoke the cable identity `key_hex` (compressed, hex) for good, by the operator: it is
    /// refused at session open with `reason`. Recorded in the audit log. Returns the sessions
    /// of it still open (to halt), with their outlets.
    pub fn revoke_cable(&self, key_hex: &str, reason: &str) -> Result<Vec<(String, String)>> {
        persist("socket-revoke-cable", || {
            let tx = self.db.unchecked_transaction()?;
            let open = revoke_in(&tx, key_hex, &format!("revoked by the operator: {reason}"))?;
            tx.commit()?;
            Ok(open)
        })
    }

    /// Apply an operator's registry, checked by `proto::registry::verify_registry`, in one
    /// SQLite transaction (all of it or nothing): each revoked entry revokes its cable for good
    /// with the registry's reason, each flagged one flags it; each is audited. Returns the open
    /// sessions of the cables it revoked, with their outlets.
    pub fn import_registry(
        &self,
        operator: &bitcoin::secp256k1::PublicKey,
        entries: &[proto::registry::Entry],
    ) -> Result<Vec<(String, String)>> {
        persist("socket-import-registry", || {
            let tx = self.db.unchecked_transaction()?;
            let mut open = Vec::new();
            for entry in entries {
                let key_hex = entry.identity_key.to_string();
                if let Some(profile) = entry.profile {
                    super::profiles::set_profile_in(
                        &tx,
                        &key_hex,
                        profile,
                        &format!("operator {operator}"),
                        entry.issued_at_unix_secs,
                    )?;
                }
                match entry.status {
                    EntryStatus::Revoked => open.extend(revoke_in(
                        &tx,
                        &key_hex,
                        &format!("revoked by operator {operator}: {}", entry.reason),
                    )?),
                    EntryStatus::Allowed => {}
                    EntryStatus::Flagged => {
                        super::cables::ensure_cable(&tx, &key_hex)?;
                        tx.execute(
                            "UPDATE cables SET flagged_reason = ?2, flagged_at_unix_ms = ?3
                             WHERE key_hex = ?1",
                            params![
                                key_hex,
                                format!("flagged by operator {operator}: {}", entry.reason),
                                unix_ms()
                            ],
                        )?;
                        super::audit::append(
                            &tx,
                            "",
                            None,
                            "flagged",
                            &format!("cable {key_hex}: {}", entry.reason),
                        )?;
                    }
                }
            }
            tx.commit()?;
            Ok(open)
        })
    }

    /// The cable identities revoked or flagged here, or with a declared profile, for a
    /// registry.
    pub fn registry_entries(&self) -> Result<Vec<RegistryRow>> {
        let mut devices = Vec::new();
        loop {
            let page = self.devices(DevicePage::ByKey {
                after_key_hex: devices.last().map(|d: &DeviceRow| d.key_hex.as_str()),
                limit: 1_000,
            })?;
            if page.is_empty() {
                break;
            }
            devices.extend(page);
        }
        devices
            .into_iter()
            .filter_map(|d| {
                let status = match d.status {
                    DeviceStatus::Revoked => EntryStatus::Revoked,
                    // Banned for good: it replaced a payment of its own (a named transaction),
                    // which travels as a revocation with its reason.
                    DeviceStatus::Banned if d.until_unix_ms.is_none() => EntryStatus::Revoked,
                    DeviceStatus::Flagged => EntryStatus::Flagged,
                    _ => EntryStatus::Allowed,
                };
                let profile = match self.profile(&d.key_hex) {
                    Ok(profile) => profile,
                    Err(e) => return Some(Err(e)),
                };
                (status != EntryStatus::Allowed || profile.is_some()).then(|| {
                    Ok(RegistryRow {
                        key_hex: d.key_hex,
                        status,
                        reason: d.reason.unwrap_or_default(),
                        profile,
                    })
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CableAuth;

    #[test]
    fn a_revoked_cable_is_refused_and_listed_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let key = bitcoin::secp256k1::PublicKey::from_secret_key(
            &secp,
            &bitcoin::secp256k1::SecretKey::from_slice(&[7; 32]).unwrap(),
        );
        let cable = CableAuth { key, sequence: 1 };
        assert_eq!(
            store.admit_cable(&cable).unwrap(),
            super::super::Admitted::Yes
        );
        assert_eq!(
            store.devices(DevicePage::Recent { limit: 10 }).unwrap()[0].status,
            DeviceStatus::Allowed
        );
        let open = store.revoke_cable(&key.to_string(), "stolen").unwrap();
        assert!(open.is_empty());
        let devices = store.devices(DevicePage::Recent { limit: 10 }).unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].status, DeviceStatus::Revoked);
        assert_eq!(
            devices[0].reason.as_deref(),
            Some("revoked by the operator: stolen")
        );
        let again = CableAuth { key, sequence: 2 };
        assert!(matches!(
            store.admit_cable(&again).unwrap(),
            super::super::Admitted::Banned {
                until_unix_ms: None,
                ..
            }
        ));
        let audit = store.audit_tail(10).unwrap();
        assert_eq!(audit[0].event, "revoked");
        assert_eq!(store.audit_counts().unwrap()[0].2, 1);
    }

    #[test]
    fn devices_list_page_by_page_in_key_order_or_the_most_recent_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let mut keys: Vec<String> = (1..=5u8)
            .map(|byte| {
                let key = bitcoin::secp256k1::PublicKey::from_secret_key(
                    &secp,
                    &bitcoin::secp256k1::SecretKey::from_slice(&[byte; 32]).unwrap(),
                );
                store.admit_cable(&CableAuth { key, sequence: 1 }).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
                key.to_string()
            })
            .collect();
        let newest = keys.last().unwrap().clone();
        keys.sort();
        let mut listed = Vec::new();
        loop {
            let page = store
                .devices(DevicePage::ByKey {
                    after_key_hex: listed.last().map(String::as_str),
                    limit: 2,
                })
                .unwrap();
            assert!(page.len() <= 2);
            if page.is_empty() {
                break;
            }
            listed.extend(page.into_iter().map(|d| d.key_hex));
        }
        assert_eq!(listed, keys);
        // Seen at the same millisecond or later: the last admitted is among the most recent.
        let recent = store.devices(DevicePage::Recent { limit: 5 }).unwrap();
        assert_eq!(recent.len(), 5);
        assert!(recent.iter().any(|d| d.key_hex == newest));
        assert_eq!(
            store
                .devices(DevicePage::Recent { limit: 1 })
                .unwrap()
                .len(),
            1
        );
    }
}
