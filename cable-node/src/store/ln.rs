//! The cable's Lightning payments (invoices and keysends): recorded before they are sent,
//! and how each ended.

use rusqlite::{params, OptionalExtension};

use super::persist;
use super::{CableStore, Result};

/// A Lightning payment as the cable recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LnRecord {
    /// Its id in the session.
    pub payment_id: u64,
    /// Payment hash, hex.
    pub payment_hash: String,
    /// `sending`, `paid` or `failed`.
    pub status: String,
    /// A keysend's preimage, hex; `None` for an invoice.
    pub keysend_preimage_hex: Option<String>,
}

impl CableStore {
    /// Record a Lightning payment about to be sent (status `sending`), before it is sent.
    pub fn sending_ln(
        &self,
        session_id: &str,
        payment_id: u64,
        payment_hash: &str,
        amount_msat: u64,
    ) -> Result<()> {
        persist("cable-sending-ln", || {
            self.db.execute(
                "INSERT OR IGNORE INTO ln_payments (session_id, payment_id, payment_hash, amount_msat, status)
                 VALUES (?1, ?2, ?3, ?4, 'sending')",
                params![session_id, payment_id as i64, payment_hash, amount_msat as i64],
            )?;
            Ok(())
        })
    }

    /// Record a keysend about to be sent (status `sending`) with its preimage, before it is
    /// sent.
    pub fn sending_keysend(
        &self,
        session_id: &str,
        payment_id: u64,
        payment_hash: &str,
        preimage_hex: &str,
        amount_msat: u64,
    ) -> Result<()> {
        persist("cable-sending-keysend", || {
            self.db.execute(
                "INSERT INTO ln_payments (session_id, payment_id, payment_hash, amount_msat, status,
                                          keysend_preimage_hex)
                 VALUES (?1, ?2, ?3, ?4, 'sending', ?5)",
                params![
                    session_id,
                    payment_id as i64,
                    payment_hash,
                    amount_msat as i64,
                    preimage_hex
                ],
            )?;
            Ok(())
        })
    }

    /// The session's Lightning payment with the highest payment id, if any.
    pub fn last_ln_payment(&self, session_id: &str) -> Result<Option<LnRecord>> {
        self.db
            .query_row(
                "SELECT payment_id, payment_hash, status, keysend_preimage_hex FROM ln_payments
                 WHERE session_id = ?1 ORDER BY payment_id DESC LIMIT 1",
                params![session_id],
                |r| {
                    Ok(LnRecord {
                        payment_id: r.get::<_, i64>(0)? as u64,
                        payment_hash: r.get(1)?,
                        status: r.get(2)?,
                        keysend_preimage_hex: r.get(3)?,
                    })
                },
            )
            .optional()
    }

    /// Record how a Lightning payment ended.
    pub fn ln_done(&self, payment_hash: &str, status: &str, latency_ms: Option<u64>) -> Result<()> {
        persist("cable-ln-done", || {
            self.db.execute(
                "UPDATE ln_payments SET status = ?2, latency_ms = ?3 WHERE payment_hash = ?1",
                params![payment_hash, status, latency_ms.map(|l| l as i64)],
            )?;
            Ok(())
        })
    }

    /// The payment hash and status (`sending`, `paid`, `failed`) recorded for a Lightning
    /// payment of a session, if any.
    pub fn ln_payment_of(
        &self,
        session_id: &str,
        payment_id: u64,
    ) -> Result<Option<(String, String)>> {
        self.db
            .query_row(
                "SELECT payment_hash, status FROM ln_payments WHERE session_id = ?1 AND payment_id = ?2",
                params![session_id, payment_id as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// Whether a payment hash was paid (or is being paid) in any session.
    pub fn ln_hash_used(&self, payment_hash: &str) -> Result<bool> {
        let n: i64 = self.db.query_row(
            "SELECT COUNT(*) FROM ln_payments WHERE payment_hash = ?1 AND status != 'failed'",
            params![payment_hash],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }
}
