//! The cable's registry of sockets and its metering receipts (design.md "Attestation"; seed
//! 004: devices verify each other locally; seed 000 §VII.B): every socket it met, the ones it
//! caught billing more than its own meter counted, and every receipt it countersigned.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::persist;
use super::{unix_ms, CableStore, Result};

/// What the cable thinks of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketStatus {
    /// Paid as usual.
    Allowed,
    /// Caught over-counting: its offers are refused until its owner allows it again
    /// (`cable-node sockets --allow KEY`).
    Flagged,
}

/// A socket of the registry.
#[derive(Debug, Clone, Serialize)]
pub struct SocketRow {
    /// Identity key, 33-byte compressed, hex.
    pub identity_key: String,
    /// When the cable first accepted its offer, Unix ms.
    pub first_seen_unix_ms: i64,
    /// Sessions the cable ran with it.
    pub sessions: u64,
    /// Allowed or flagged.
    pub status: SocketStatus,
    /// Why it is flagged.
    pub reason: Option<String>,
    /// What the cable saw (JSON), when flagged.
    pub evidence: Option<serde_json::Value>,
    /// Since when it is flagged, Unix ms.
    pub since_unix_ms: Option<i64>,
}

impl CableStore {
    /// Count a session with the socket of `identity_key` (hex), first seen now if new. Returns
    /// why it is flagged, if it is: the caller refuses it.
    pub fn meet_socket(&self, identity_key: &str) -> Result<Option<String>> {
        persist("cable-meet-socket", || {
            self.db.execute(
                "INSERT OR IGNORE INTO sockets (identity_key, first_seen_unix_ms) VALUES (?1, ?2)",
                params![identity_key, unix_ms()],
            )?;
            let flagged: Option<String> = self
                .db
                .query_row(
                    "SELECT reason FROM sockets WHERE identity_key = ?1 AND status = 'flagged'",
                    params![identity_key],
                    |r| r.get(0),
                )
                .optional()?;
            if flagged.is_none() {
                self.db.execute(
                    "UPDATE sockets SET sessions = sessions + 1 WHERE identity_key = ?1",
                    params![identity_key],
                )?;
            }
            Ok(flagged)
        })
    }

    /// Flag the socket of `identity_key` (hex) with `reason` and its `evidence`.
    pub fn flag_socket(
        &self,
        identity_key: &str,
        reason: &str,
        evidence: &serde_json::Value,
    ) -> Result<()> {
        persist("cable-flag-socket", || {
            self.db.execute(
                "INSERT INTO sockets (identity_key, first_seen_unix_ms, status, reason, evidence, since_unix_ms)
                 VALUES (?1, ?2, 'flagged', ?3, ?4, ?2)
                 ON CONFLICT (identity_key) DO UPDATE SET status = 'flagged', reason = ?3,
                     evidence = ?4, since_unix_ms = ?2",
                params![identity_key, unix_ms(), reason, evidence.to_string()],
            )?;
            Ok(())
        })
    }

    /// Allow a flagged socket again. Returns whether it was known.
    pub fn allow_socket(&self, identity_key: &str) -> Result<bool> {
        persist("cable-allow-socket", || {
            let changed = self.db.execute(
                "UPDATE sockets SET status = 'allowed', reason = NULL, evidence = NULL,
                 since_unix_ms = NULL WHERE identity_key = ?1",
                params![identity_key],
            )?;
            Ok(changed > 0)
        })
    }

    /// Every socket the cable met, flagged ones first.
    pub fn sockets(&self) -> Result<Vec<SocketRow>> {
        let mut statement = self.db.prepare(
            "SELECT identity_key, first_seen_unix_ms, sessions, status, reason, evidence,
             since_unix_ms FROM sockets ORDER BY status DESC, first_seen_unix_ms",
        )?;
        let rows = statement.query_map([], |r| {
            let status: String = r.get(3)?;
            let evidence: Option<String> = r.get(5)?;
            Ok(SocketRow {
                identity_key: r.get(0)?,
                first_seen_unix_ms: r.get(1)?,
                sessions: r.get::<_, i64>(2)? as u64,
                status: if status == "flagged" {
                    SocketStatus::Flagged
                } else {
                    SocketStatus::Allowed
                },
                reason: r.get(4)?,
                evidence: evidence.and_then(|e| serde_json::from_str(&e).ok()),
                since_unix_ms: r.get(6)?,
            })
        })?;
        rows.collect()
    }

    /// Keep a receipt the cable signed for `session_id`, before it is sent (idempotent per
    /// status sequence).
    pub fn record_receipt(
        &self,
        session_id: &str,
        report: &proto::v1::StatusReport,
        body: &proto::v1::ReceiptBody,
        receipt: &proto::v1::MeteringReceipt,
    ) -> Result<()> {
        persist("cable-record-receipt", || {
            self.db.execute(
                "INSERT OR IGNORE INTO receipts (session_id, socket_sequence, socket_energy_mwh,
                 cable_energy_mwh, body, signature, signed_at_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    session_id,
                    report.sequence as i64,
                    report.energy_used_mwh as i64,
                    body.cable_energy_mwh as i64,
                    receipt.body,
                    receipt.signature,
                    unix_ms()
                ],
            )?;
            Ok(())
        })
    }

    /// The receipts the cable signed for `session_id`, oldest first.
    pub fn receipts(&self, session_id: &str) -> Result<Vec<proto::v1::MeteringReceipt>> {
        let mut statement = self.db.prepare(
            "SELECT body, signature FROM receipts WHERE session_id = ?1 ORDER BY socket_sequence",
        )?;
        let rows = statement.query_map(params![session_id], |r| {
            Ok(proto::v1::MeteringReceipt {
                body: r.get(0)?,
                signature: r.get(1)?,
            })
        })?;
        rows.collect()
    }
}
