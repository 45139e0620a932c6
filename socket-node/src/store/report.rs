//! What the socket's owner reads (design.md "Operator surface"): totals per outlet and scheme,
//! recent sessions and payments and the audit log, for the dashboard's JSON API and the
//! Prometheus metrics (the cable identities: [`super::devices`]). Read-only.
//!
//! Revenue counts what was credited: on-chain payments (`onchain`, `single-fee`, `spillman`)
//! that did not fail and were not lost, and Lightning payments received; energy sold is the
//! energy the sessions used (the meter), which a session's payments cover up to its quota.

use rusqlite::params;
use serde::Serialize;

use super::{Result, Store};

/// Credited revenue per session, in msat: on-chain payments that count, and Lightning ones.
pub(super) const SESSION_REVENUE: &str = "
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

pub(super) fn u(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
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
