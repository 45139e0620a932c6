//! Metering receipts (socket.proto `MeteringReceipt`; design.md "Attestation"): what each
//! session's cable countersigned of the socket's count, kept as received, and the session's
//! export for `socket-node receipts SESSION` ([`proto::receipt::SessionReceipts`]).

use proto::receipt::{CheckedReceipt, MeterTolerance, ReceiptHex, ReceiptPayment, SessionReceipts};
use rusqlite::{params, OptionalExtension};

use super::persist;
use super::{unix_ms, Result, Store};

/// What became of a receipt offered to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptTaken {
    /// Kept: its status is newer than every receipt's of the session.
    Kept,
    /// A receipt of the same status is kept already (a resent request).
    Again,
    /// Its status is older than the last receipt's: refused.
    Stale {
        /// The status sequence of the last receipt kept.
        last_sequence: u64,
    },
}

impl Store {
    /// Keep a checked receipt of `session_id`, unless it is not newer than the last one.
    pub fn record_receipt(
        &self,
        session_id: &str,
        checked: &CheckedReceipt,
        receipt: &proto::v1::MeteringReceipt,
    ) -> Result<ReceiptTaken> {
        persist("socket-record-receipt", || {
            let tx = self.db.unchecked_transaction()?;
            let last: Option<i64> = tx
                .query_row(
                    "SELECT MAX(socket_sequence) FROM receipts WHERE session_id = ?1",
                    params![session_id],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            let sequence = checked.report.sequence;
            if let Some(last) = last.map(|l| l as u64) {
                if sequence < last {
                    return Ok(ReceiptTaken::Stale {
                        last_sequence: last,
                    });
                }
                if sequence == last {
                    return Ok(ReceiptTaken::Again);
                }
            }
            tx.execute(
                "INSERT INTO receipts (session_id, socket_sequence, socket_energy_mwh, cable_metered,
                 cable_energy_mwh, body, signature, received_at_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    session_id,
                    sequence as i64,
                    checked.report.energy_used_mwh as i64,
                    checked.body.cable_metered,
                    checked.body.cable_energy_mwh as i64,
                    receipt.body,
                    receipt.signature,
                    unix_ms()
                ],
            )?;
            tx.commit()?;
            Ok(ReceiptTaken::Kept)
        })
    }

    /// The (socket energy, cable energy) of the session's metered receipts, oldest first.
    pub fn metered_pairs(&self, session_id: &str) -> Result<Vec<(u64, u64)>> {
        let mut statement = self.db.prepare(
            "SELECT socket_energy_mwh, cable_energy_mwh FROM receipts
             WHERE session_id = ?1 AND cable_metered ORDER BY socket_sequence",
        )?;
        let rows = statement.query_map(params![session_id], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?;
        rows.collect()
    }

    /// Everything `verify-receipts` checks of `session_id`: its cable, energy, payments (on
    /// chain and Lightning, credited ones) and receipts. `None` for an unknown session.
    pub fn session_receipts(
        &self,
        session_id: &str,
        socket_identity_key: &str,
        tolerance: MeterTolerance,
    ) -> Result<Option<SessionReceipts>> {
        let session = self
            .db
            .query_row(
                "SELECT outlet_id, cable_key_hex, energy_used_mwh FROM sessions WHERE id = ?1",
                params![session_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)? as u64,
                    ))
                },
            )
            .optional()?;
        let Some((outlet_id, cable_identity_key, energy_used_mwh)) = session else {
            return Ok(None);
        };
        let mut statement = self.db.prepare(
            "SELECT payment_id, id, msat, quota_mwh FROM
               (SELECT session_id, payment_id, txid AS id, amount_sat * 1000 AS msat, quota_mwh
                  FROM payments WHERE status != 'failed'
                UNION ALL
                SELECT session_id, payment_id, payment_hash, amount_msat, quota_mwh
                  FROM ln_payments)
             WHERE session_id = ?1 ORDER BY payment_id",
        )?;
        let payments = statement
            .query_map(params![session_id], |r| {
                Ok(ReceiptPayment {
                    payment_id: r.get::<_, i64>(0)? as u64,
                    txid_or_payment_hash: r.get(1)?,
                    amount_msat: r.get::<_, i64>(2)? as u64,
                    quota_mwh: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<Result<Vec<_>>>()?;
        let mut statement = self.db.prepare(
            "SELECT body, signature FROM receipts WHERE session_id = ?1 ORDER BY socket_sequence",
        )?;
        let receipts = statement
            .query_map(params![session_id], |r| {
                Ok(ReceiptHex::of(&proto::v1::MeteringReceipt {
                    body: r.get(0)?,
                    signature: r.get(1)?,
                }))
            })?
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(SessionReceipts {
            session_id: session_id.to_owned(),
            outlet_id,
            socket_identity_key: socket_identity_key.to_owned(),
            cable_identity_key,
            energy_used_mwh,
            payments,
            receipts,
            tolerance,
        }))
    }
}
