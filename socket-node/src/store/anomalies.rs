//! Anomalies (design.md "Attestation"; seed 004 §4, the verification interface): what a rule
//! found in a session's data, its evidence (JSON), and the action taken (`record`, `flag`,
//! `halt`, `revoke`). Recording one flags the session's cable and writes an audit row, in one
//! SQLite transaction.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::persist;
use super::{unix_ms, Result, Store};

/// An anomaly as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnomalyRow {
    /// Its id.
    pub id: i64,
    /// When, Unix ms.
    pub at_unix_ms: i64,
    /// The outlet.
    pub outlet_id: String,
    /// The session, if any.
    pub session_id: Option<String>,
    /// The session's cable key (hex); empty when unknown.
    pub cable_key_hex: String,
    /// The rule that found it (`power-above-rating`, ...).
    pub rule: String,
    /// What was done: `record`, `flag`, `halt` (lockout) or `revoke`.
    pub action: String,
    /// The evidence, JSON (readings, limits, times).
    pub evidence: String,
}

impl Store {
    /// Whether `rule` already found an anomaly in `session_id` (a rule is recorded once per
    /// session: its first evidence is the one that counts).
    pub fn has_anomaly(&self, session_id: &str, rule: &str) -> Result<bool> {
        self.db.query_row(
            "SELECT EXISTS (SELECT 1 FROM anomalies WHERE session_id = ?1 AND rule = ?2)",
            params![session_id, rule],
            |r| r.get(0),
        )
    }

    /// Why a session was halted or its cable banned by an anomaly recorded in `session_id`
    /// (the cable's ban or flag reason, else the rule), if any: a session the socket must not
    /// resume after a restart (it stopped between recording the anomaly and the lockout).
    pub fn halting_anomaly(&self, session_id: &str) -> Result<Option<String>> {
        self.db
            .query_row(
                "SELECT COALESCE(c.banned_reason, c.flagged_reason, a.rule) FROM anomalies a
                 LEFT JOIN cables c ON c.key_hex = a.cable_key_hex
                 WHERE a.session_id = ?1 AND a.action IN ('halt', 'ban')
                 ORDER BY a.id LIMIT 1",
                params![session_id],
                |r| r.get(0),
            )
            .optional()
    }

    /// Record an anomaly of `session_id` on `outlet_id`, flag its cable with `reason`, and
    /// write the audit row `anomaly`. Returns the cable key (hex), if the session has one.
    pub fn record_anomaly(
        &self,
        outlet_id: &str,
        session_id: Option<&str>,
        rule: &str,
        action: &str,
        evidence: &serde_json::Value,
        reason: &str,
    ) -> Result<Option<String>> {
        persist("socket-record-anomaly", || {
            let cable = match session_id {
                Some(id) => self.session_cable(id)?,
                None => None,
            };
            let tx = self.db.unchecked_transaction()?;
            anomaly_in(
                &tx,
                outlet_id,
                session_id,
                cable.as_deref(),
                rule,
                action,
                evidence,
                reason,
            )?;
            tx.commit()?;
            Ok(cable)
        })
    }

    /// The latest `limit` anomalies, newest first.
    pub fn anomalies(&self, limit: u32) -> Result<Vec<AnomalyRow>> {
        let mut statement = self.db.prepare(
            "SELECT id, at_unix_ms, outlet_id, session_id, cable_key_hex, rule, action, evidence
             FROM anomalies ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = statement.query_map(params![limit], |r| {
            Ok(AnomalyRow {
                id: r.get(0)?,
                at_unix_ms: r.get(1)?,
                outlet_id: r.get(2)?,
                session_id: r.get(3)?,
                cable_key_hex: r.get(4)?,
                rule: r.get(5)?,
                action: r.get(6)?,
                evidence: r.get(7)?,
            })
        })?;
        rows.collect()
    }
}

/// [`Store::record_anomaly`] inside the caller's transaction, for the cable `cable` (hex) when
/// known.
#[allow(clippy::too_many_arguments)]
pub(super) fn anomaly_in(
    tx: &rusqlite::Connection,
    outlet_id: &str,
    session_id: Option<&str>,
    cable: Option<&str>,
    rule: &str,
    action: &str,
    evidence: &serde_json::Value,
    reason: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO anomalies (at_unix_ms, outlet_id, session_id, cable_key_hex, rule,
                                action, evidence)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            unix_ms(),
            outlet_id,
            session_id,
            cable.unwrap_or_default(),
            rule,
            action,
            evidence.to_string()
        ],
    )?;
    if let Some(key) = cable {
        super::cables::ensure_cable(tx, key)?;
        tx.execute(
            "UPDATE cables SET anomalies = anomalies + 1, flagged_reason = ?2,
                 flagged_at_unix_ms = ?3 WHERE key_hex = ?1",
            params![key, reason, unix_ms()],
        )?;
    }
    super::audit::append(
        tx,
        outlet_id,
        session_id,
        "anomaly",
        &format!("{rule} ({action}): {reason}"),
    )?;
    Ok(())
}
