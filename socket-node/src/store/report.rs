//! What the socket's owner reads (design.md "Operator surface"): totals per outlet and scheme,
//! recent sessions and payments, the cable identities (devices) and the audit log, for the
//! dashboard's JSON API and the Prometheus metrics. Read-only but for [`Store::revoke_cable`].
//!
//! Revenue counts what was credited: on-chain payments (`onchain`, `single-fee`, `spillman`)
//! that did not fail and were not lost, and Lightning payments received; energy sold is the
//! energy the sessions used (the meter), which a session's payments cover up to its quota.

use proto::registry::EntryStatus;
use rusqlite::params;
use serde::Serialize;

use super::persist;
use super::{unix_ms, Result, Store};

/// Credited revenue per session, in msat: on-chain payments that count, and Lightning ones.
const SESSION_REVENUE: &str = "
    SELECT session_id, SUM(msat) AS revenue_msat, COUNT(*) AS payments FROM (
        SELECT session_id, amount_sat * 1000 AS msat FROM payments
            WHERE status NOT IN ('failed', 'lost')
        UNION ALL
        SELECT session_id, amount_msat FROM ln_payments)
    GROUP BY session_id";

/// Totals of one outlet and scheme, over all sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutletTotals {
    /// The outlet.
    pub outlet_id: String,
    /// The scheme (`onchain`, `single-fee`, `spillman`, `lightning`).
    pub scheme: String,
    /// Sessions opened.
    pub sessions: u64,
    /// Of them, ended by a lockout.
    pub lockouts: u64,
    /// Energy the sessions used, mWh.
    pub energy_used_mwh: u64,
    /// Revenue credited, msat.
    pub revenue_msat: u64,
    /// Payments credited.
    pub payments: u64,
    /// On-chain payments credited, then lost (replaced, double-spent).
    pub payments_lost: u64,
    /// What those lost payments were worth, sat.
    pub lost_sat: u64,
}

/// A session, for the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    /// Session id.
    pub id: String,
    /// Its outlet.
    pub outlet_id: String,
    /// Its scheme.
    pub scheme: String,
    /// The cable identity key that opened it (compressed, hex); empty for old sessions.
    pub cable_key_hex: String,
    /// When it opened, Unix ms.
    pub started_at_unix_ms: i64,
    /// When it ended, Unix ms; `None` while in progress.
    pub ended_at_unix_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Energy used, mWh (as last saved: at most a second behind).
    pub energy_used_mwh: u64,
    /// Revenue credited, msat.
    pub revenue_msat: u64,
    /// Payments credited.
    pub payments: u64,
}

/// A payment, for the owner: an on-chain transaction or a Lightning payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentRow {
    /// Its session.
    pub session_id: String,
    /// The session's outlet.
    pub outlet_id: String,
    /// The session's scheme.
    pub scheme: String,
    /// Payment id within the session.
    pub payment_id: u64,
    /// On chain: the txid; Lightning: the payment hash (hex).
    pub txid_or_payment_hash: String,
    /// What it pays, msat.
    pub amount_msat: u64,
    /// Energy it bought, mWh.
    pub quota_mwh: u64,
    /// On chain: `accepted`, `broadcast`, `held`, `confirmed`, `failed` or `lost`; Lightning:
    /// `received`.
    pub status: String,
    /// When it was credited, Unix ms.
    pub at_unix_ms: i64,
}

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

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    /// Its place in the hash chain, from 1.
    pub seq: i64,
    /// When, Unix ms.
    pub at_unix_ms: i64,
    /// The outlet.
    pub outlet_id: String,
    /// The session, if any.
    pub session_id: Option<String>,
    /// What happened (a fixed code: `payment-refused`, `payment-lost`, `revoked`, ...).
    pub event: String,
    /// Details for people.
    pub detail: String,
    /// Its hash in the chain ([`super::audit`]), hex.
    pub hash_hex: String,
}

fn u(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
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
    /// Totals per outlet and scheme, over every session.
    pub fn outlet_totals(&self) -> Result<Vec<OutletTotals>> {
        let mut statement = self.db.prepare(&format!(
            "SELECT s.outlet_id, s.scheme, COUNT(*),
                    SUM(CASE WHEN s.end_reason LIKE 'lockout:%' THEN 1 ELSE 0 END),
                    SUM(s.energy_used_mwh), COALESCE(SUM(r.revenue_msat), 0),
                    COALESCE(SUM(r.payments), 0),
                    COALESCE(SUM(l.lost), 0), COALESCE(SUM(l.lost_sat), 0)
             FROM sessions s
             LEFT JOIN ({SESSION_REVENUE}) r ON r.session_id = s.id
             LEFT JOIN (SELECT session_id, COUNT(*) AS lost, SUM(amount_sat) AS lost_sat
                        FROM payments WHERE status = 'lost' GROUP BY session_id) l
                 ON l.session_id = s.id
             GROUP BY s.outlet_id, s.scheme ORDER BY s.outlet_id, s.scheme"
        ))?;
        let rows = statement.query_map([], |r| {
            Ok(OutletTotals {
                outlet_id: r.get(0)?,
                scheme: r.get(1)?,
                sessions: u(r.get(2)?),
                lockouts: u(r.get(3)?),
                energy_used_mwh: u(r.get(4)?),
                revenue_msat: u(r.get(5)?),
                payments: u(r.get(6)?),
                payments_lost: u(r.get(7)?),
                lost_sat: u(r.get(8)?),
            })
        })?;
        rows.collect()
    }

    /// The latest `limit` sessions, newest first.
    pub fn recent_sessions(&self, limit: u32) -> Result<Vec<SessionRow>> {
        let mut statement = self.db.prepare(&format!(
            "SELECT s.id, s.outlet_id, s.scheme, s.cable_key_hex, s.started_at_unix_ms,
                    s.ended_at_unix_ms, s.end_reason, s.energy_used_mwh,
                    COALESCE(r.revenue_msat, 0), COALESCE(r.payments, 0)
             FROM sessions s LEFT JOIN ({SESSION_REVENUE}) r ON r.session_id = s.id
             ORDER BY s.started_at_unix_ms DESC, s.rowid DESC LIMIT ?1"
        ))?;
        let rows = statement.query_map(params![limit], |r| {
            Ok(SessionRow {
                id: r.get(0)?,
                outlet_id: r.get(1)?,
                scheme: r.get(2)?,
                cable_key_hex: r.get(3)?,
                started_at_unix_ms: r.get(4)?,
                ended_at_unix_ms: r.get(5)?,
                end_reason: r.get(6)?,
                energy_used_mwh: u(r.get(7)?),
                revenue_msat: u(r.get(8)?),
                payments: u(r.get(9)?),
            })
        })?;
        rows.collect()
    }

    /// The latest `limit` payments, on chain and Lightning, newest first.
    pub fn recent_payments(&self, limit: u32) -> Result<Vec<PaymentRow>> {
        let mut statement = self.db.prepare(
            "SELECT p.session_id, s.outlet_id, s.scheme, p.payment_id, p.id, p.msat, p.quota_mwh,
                    p.status, p.at
             FROM (SELECT session_id, payment_id, txid AS id, amount_sat * 1000 AS msat,
                          quota_mwh, status, accepted_at_unix_ms AS at FROM payments
                   UNION ALL
                   SELECT session_id, payment_id, payment_hash, amount_msat, quota_mwh,
                          'received', received_at_unix_ms FROM ln_payments) p
             JOIN sessions s ON s.id = p.session_id
             ORDER BY p.at DESC LIMIT ?1",
        )?;
        let rows = statement.query_map(params![limit], |r| {
            Ok(PaymentRow {
                session_id: r.get(0)?,
                outlet_id: r.get(1)?,
                scheme: r.get(2)?,
                payment_id: u(r.get(3)?),
                txid_or_payment_hash: r.get(4)?,
                amount_msat: u(r.get(5)?),
                quota_mwh: u(r.get(6)?),
                status: r.get(7)?,
                at_unix_ms: r.get(8)?,
            })
        })?;
        rows.collect()
    }

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

    /// The latest `limit` rows of the audit log, newest first.
    pub fn audit_tail(&self, limit: u32) -> Result<Vec<AuditRow>> {
        let mut statement = self.db.prepare(
            "SELECT seq, at_unix_ms, outlet_id, session_id, event, detail, hash_hex FROM audit
             ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = statement.query_map(params![limit], |r| {
            Ok(AuditRow {
                seq: r.get(0)?,
                at_unix_ms: r.get(1)?,
                outlet_id: r.get(2)?,
                session_id: r.get(3)?,
                event: r.get(4)?,
                detail: r.get(5)?,
                hash_hex: r.get(6)?,
            })
        })?;
        rows.collect()
    }

    /// How many audit rows of each outlet and event there are (`t2t_events_total`).
    pub fn audit_counts(&self) -> Result<Vec<(String, String, u64)>> {
        let mut statement = self.db.prepare(
            "SELECT outlet_id, event, COUNT(*) FROM audit GROUP BY outlet_id, event
             ORDER BY outlet_id, event",
        )?;
        let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, u(r.get(2)?))))?;
        rows.collect()
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
