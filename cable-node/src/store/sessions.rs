//! Sessions: opened and ended, the socket's signed status reports of each, and what an
//! unfinished one committed to pay.

use bitcoin::{Amount, ScriptBuf};
use rusqlite::{params, OptionalExtension};

use super::persist;
use super::{unix_ms, CableStore, Result};

/// A session the cable did not finish ([`CableStore::unfinished_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// Session id.
    pub id: String,
    /// What it committed to pay ([`CableStore::committed`]).
    pub committed: Amount,
    /// The payout script of the offer it opened with (`None` for a session stored before
    /// schema version 4).
    pub payout_script: Option<ScriptBuf>,
}

impl CableStore {
    /// Record a session the socket opened (idempotent), with the payout script of the offer
    /// it opened with.
    pub fn open_session(
        &self,
        id: &str,
        socket_identity_key: &str,
        outlet_id: &str,
        payout_script: &[u8],
    ) -> Result<()> {
        persist("cable-open-session", || {
            self.db.execute(
                "INSERT OR IGNORE INTO sessions (id, socket_identity_key, outlet_id, started_at_unix_ms,
                                                 payout_script_hex)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    socket_identity_key,
                    outlet_id,
                    unix_ms(),
                    ScriptBuf::from_bytes(payout_script.to_vec()).to_hex_string()
                ],
            )?;
            Ok(())
        })
    }

    /// Close a session with its outcome.
    pub fn end_session(&self, id: &str, outcome: &str) -> Result<()> {
        persist("cable-end-session", || {
            self.db.execute(
                "UPDATE sessions SET ended_at_unix_ms = ?2, outcome = ?3 WHERE id = ?1",
                params![id, unix_ms(), outcome],
            )?;
            Ok(())
        })
    }

    /// Keep a status report of `session_id` that the socket signed (verified by the caller;
    /// idempotent per sequence).
    pub fn record_status(
        &self,
        session_id: &str,
        report: &proto::v1::StatusReport,
        signed: &proto::v1::SignedStatus,
    ) -> Result<()> {
        persist("cable-record-status", || {
            let state = proto::v1::OutletState::try_from(report.state)
                .unwrap_or(proto::v1::OutletState::Unspecified);
            self.db.execute(
                "INSERT OR IGNORE INTO status_reports (session_id, sequence, state, energy_used_mwh,
                 quota_remaining_mwh, time_unix_ms, report, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    session_id,
                    report.sequence as i64,
                    state.as_str_name(),
                    report.energy_used_mwh as i64,
                    report.quota_remaining_mwh as i64,
                    report.time_unix_ms as i64,
                    signed.report,
                    signed.signature
                ],
            )?;
            Ok(())
        })
    }

    /// The signed status reports kept for `session_id`, oldest first.
    pub fn status_reports(&self, session_id: &str) -> Result<Vec<proto::v1::SignedStatus>> {
        let mut statement = self.db.prepare(
            "SELECT report, signature FROM status_reports WHERE session_id = ?1 ORDER BY sequence",
        )?;
        let rows = statement.query_map(params![session_id], |r| {
            Ok(proto::v1::SignedStatus {
                report: r.get(0)?,
                signature: r.get(1)?,
            })
        })?;
        rows.collect()
    }

    /// The last session with `outlet_id` of the socket `socket_identity_key` that has not
    /// ended (the cable stopped in it), with what was paid in it.
    pub fn unfinished_session(
        &self,
        outlet_id: &str,
        socket_identity_key: &str,
    ) -> Result<Option<Unfinished>> {
        let row: Option<(String, Option<String>)> = self
            .db
            .query_row(
                "SELECT id, payout_script_hex FROM sessions
                 WHERE outlet_id = ?1 AND socket_identity_key = ?2
                 AND ended_at_unix_ms IS NULL ORDER BY started_at_unix_ms DESC LIMIT 1",
                params![outlet_id, socket_identity_key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((id, script_hex)) = row else {
            return Ok(None);
        };
        Ok(Some(Unfinished {
            committed: self.committed(&id)?,
            payout_script: script_hex.and_then(|hex| ScriptBuf::from_hex(&hex).ok()),
            id,
        }))
    }

    /// What a session has committed to pay: every payment signed and not refused, since a
    /// signature sent may have been taken even when its reply was lost. Budgets count this.
    pub fn committed(&self, session_id: &str) -> Result<Amount> {
        let sat: i64 = self.db.query_row(
            "SELECT COALESCE(SUM(amount_sat), 0) FROM payments
             WHERE session_id = ?1 AND status IN ('signed', 'accepted')",
            params![session_id],
            |r| r.get(0),
        )?;
        let msat: i64 = self.db.query_row(
            "SELECT COALESCE(SUM(amount_msat), 0) FROM ln_payments
             WHERE session_id = ?1 AND status != 'failed'",
            params![session_id],
            |r| r.get(0),
        )?;
        Ok(Amount::from_sat(sat as u64 + (msat as u64).div_ceil(1_000)))
    }
}
