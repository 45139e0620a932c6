//! Lightning: BOLT11 invoices issued and payments received (by invoice or keysend).

use proto::units::EnergyMwh;
use rusqlite::{params, OptionalExtension};

use super::persist;
use super::{unix_ms, Result, Store, StoredTerms};

impl Store {
    /// Record a BOLT11 invoice issued for a payment, before it is handed out.
    pub fn issue_invoice(
        &self,
        session_id: &str,
        payment_id: u64,
        payment_hash: &str,
        bolt11: &str,
        amount_msat: u64,
        quota: EnergyMwh,
    ) -> Result<()> {
        persist("socket-issue-invoice", || {
            self.db.execute(
                "INSERT INTO ln_invoices (payment_hash, session_id, payment_id, bolt11, amount_msat,
                                          quota_mwh, issued_at_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    payment_hash,
                    session_id,
                    payment_id as i64,
                    bolt11,
                    amount_msat as i64,
                    quota.0 as i64,
                    unix_ms()
                ],
            )?;
            Ok(())
        })
    }

    /// The invoice issued for a payment, if any.
    pub fn invoice_of(&self, session_id: &str, payment_id: u64) -> Result<Option<String>> {
        self.db
            .query_row(
                "SELECT bolt11 FROM ln_invoices WHERE session_id = ?1 AND payment_id = ?2",
                params![session_id, payment_id as i64],
                |r| r.get(0),
            )
            .optional()
    }

    /// Record a Lightning payment received for an invoice of ours. Returns the session and
    /// quota to credit, or `None` when the hash is not ours, the amount is short, or it was
    /// recorded before (so it is never credited twice).
    pub fn receive_ln_payment(
        &self,
        payment_hash: &str,
        amount_msat: u64,
    ) -> Result<Option<(String, EnergyMwh)>> {
        persist("socket-receive-ln-payment", || {
            let invoice = self
                .db
                .query_row(
                    "SELECT session_id, payment_id, amount_msat, quota_mwh FROM ln_invoices WHERE payment_hash = ?1",
                    params![payment_hash],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)?)),
                )
                .optional()?;
            let Some((session_id, payment_id, expected_msat, quota)) = invoice else {
                return Ok(None);
            };
            if amount_msat < expected_msat {
                return Ok(None);
            }
            let inserted = self.db.execute(
                "INSERT OR IGNORE INTO ln_payments (payment_hash, session_id, payment_id, amount_msat,
                                                    quota_mwh, received_at_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    payment_hash,
                    session_id,
                    payment_id,
                    amount_msat as i64,
                    quota,
                    unix_ms()
                ],
            )?;
            Ok((inserted == 1).then_some((session_id, EnergyMwh(quota as u64))))
        })
    }

    /// Record a keysend received for payment `payment_id` of a session, with the terms it
    /// fills (written when the keysend is the next payment, not one issued before), in one
    /// SQLite transaction. Returns whether it is new: a payment id paid before (by invoice or
    /// keysend) is not recorded again.
    pub fn receive_keysend(
        &mut self,
        payment_hash: &str,
        session_id: &str,
        payment_id: u64,
        amount_msat: u64,
        new_terms: Option<StoredTerms>,
        quota: EnergyMwh,
    ) -> Result<bool> {
        persist("socket-receive-keysend", || {
            let tx = self.db.transaction()?;
            if let Some(terms) = new_terms {
                tx.execute(
                    "INSERT OR IGNORE INTO terms (session_id, payment_id, amount_sat, quota_mwh,
                                                  issued_at_unix_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        session_id,
                        payment_id as i64,
                        terms.amount.to_sat() as i64,
                        terms.quota.0 as i64,
                        unix_ms()
                    ],
                )?;
            }
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO ln_payments (payment_hash, session_id, payment_id, amount_msat,
                                                    quota_mwh, received_at_unix_ms, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'keysend')",
                params![
                    payment_hash,
                    session_id,
                    payment_id as i64,
                    amount_msat as i64,
                    quota.0 as i64,
                    unix_ms()
                ],
            )?;
            tx.commit()?;
            Ok(inserted == 1)
        })
    }

    /// Whether a Lightning payment with this payment hash was recorded.
    pub fn ln_hash_received(&self, payment_hash: &str) -> Result<bool> {
        let n: i64 = self.db.query_row(
            "SELECT COUNT(*) FROM ln_payments WHERE payment_hash = ?1",
            params![payment_hash],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Whether a payment of a session was received over Lightning.
    pub fn ln_payment_received(&self, session_id: &str, payment_id: u64) -> Result<bool> {
        let n: i64 = self.db.query_row(
            "SELECT COUNT(*) FROM ln_payments WHERE session_id = ?1 AND payment_id = ?2",
            params![session_id, payment_id as i64],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }
}
