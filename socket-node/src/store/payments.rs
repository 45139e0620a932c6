//! Terms issued per payment and the payments themselves (on chain: accepted, broadcast, held, failed).

use bitcoin::consensus::encode;
use bitcoin::{Amount, Transaction, Txid};
use proto::units::EnergyMwh;
use rusqlite::{params, Connection, OptionalExtension};

use super::persist;
use super::{unix_ms, CheckedTx, PaymentStatus, Result, Store, StoredPayment, StoredTerms};

/// Keep `parents`, the unconfirmed transactions `child` spends from (schema version 12): each
/// parent once, however many children name it.
pub(super) fn insert_parents(db: &Connection, child: &Txid, parents: &[Transaction]) -> Result<()> {
    for parent in parents {
        let parent_txid = parent.compute_txid().to_string();
        db.execute(
            "INSERT OR IGNORE INTO parent_txs (txid, tx_hex) VALUES (?1, ?2)",
            params![parent_txid, encode::serialize_hex(parent)],
        )?;
        db.execute(
            "INSERT OR IGNORE INTO tx_parents (child_txid, parent_txid) VALUES (?1, ?2)",
            params![child.to_string(), parent_txid],
        )?;
    }
    Ok(())
}

/// Insert a payment row with `status`: `accepted` (broadcast by the socket) or `held` (kept
/// unbroadcast: a single-fee set's latest, a spillman channel's highest). Either counts as
/// credited.
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_payment(
    db: &Connection,
    status: PaymentStatus,
    session_id: &str,
    payment_id: u64,
    tx: &Transaction,
    terms: StoredTerms,
    fee: Amount,
    vsize: u64,
) -> Result<()> {
    db.execute(
        "INSERT INTO payments (session_id, payment_id, txid, tx_hex, amount_sat, quota_mwh,
                               fee_sat, vsize, status, accepted_at_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?9)",
        params![
            session_id,
            payment_id as i64,
            tx.compute_txid().to_string(),
            encode::serialize_hex(tx),
            terms.amount.to_sat() as i64,
            terms.quota.0 as i64,
            fee.to_sat() as i64,
            vsize as i64,
            unix_ms(),
            status
        ],
    )?;
    Ok(())
}

fn payment_row(r: &rusqlite::Row<'_>) -> Result<StoredPayment> {
    let hex: String = r.get(2)?;
    let tx = encode::deserialize_hex(&hex).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(StoredPayment {
        session_id: r.get(0)?,
        payment_id: r.get::<_, i64>(1)? as u64,
        tx,
        status: r.get(3)?,
        quota: EnergyMwh(r.get::<_, i64>(4)? as u64),
        amount: Amount::from_sat(r.get::<_, i64>(5)? as u64),
    })
}

impl Store {
    /// Record the terms issued for a payment.
    pub fn issue_terms(&self, session_id: &str, payment_id: u64, terms: StoredTerms) -> Result<()> {
        persist("socket-issue-terms", || {
            self.db.execute(
                "INSERT INTO terms (session_id, payment_id, amount_sat, quota_mwh, issued_at_unix_ms,
                                    set_index, value_sat)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    session_id,
                    payment_id as i64,
                    terms.amount.to_sat() as i64,
                    terms.quota.0 as i64,
                    unix_ms(),
                    terms.single_fee.map(|(set, _)| set as i64),
                    terms.single_fee.map(|(_, value)| value.to_sat() as i64),
                ],
            )?;
            Ok(())
        })
    }

    /// Issue `terms` for the next payment of `session_id`: one above the highest payment id
    /// issued so far (a keysend's included, [`Store::receive_keysend`]), decided and written
    /// under one hold of the store. Returns that payment id.
    pub fn issue_next_terms(&self, session_id: &str, terms: StoredTerms) -> Result<u64> {
        let payment_id = self.last_payment_id(session_id)? + 1;
        self.issue_terms(session_id, payment_id, terms)?;
        Ok(payment_id)
    }

    /// The terms issued for a payment, if any.
    pub fn terms(&self, session_id: &str, payment_id: u64) -> Result<Option<StoredTerms>> {
        self.db
            .query_row(
                "SELECT amount_sat, quota_mwh, set_index, value_sat FROM terms
                 WHERE session_id = ?1 AND payment_id = ?2",
                params![session_id, payment_id as i64],
                |r| {
                    let set: Option<i64> = r.get(2)?;
                    let value: Option<i64> = r.get(3)?;
                    Ok(StoredTerms {
                        amount: Amount::from_sat(r.get::<_, i64>(0)? as u64),
                        quota: EnergyMwh(r.get::<_, i64>(1)? as u64),
                        single_fee: set
                            .zip(value)
                            .map(|(set, value)| (set as u32, Amount::from_sat(value as u64))),
                    })
                },
            )
            .optional()
    }

    /// Persist an accepted payment (status `accepted`) with its unconfirmed parents, in one
    /// SQLite transaction — before it is broadcast or credited. Returns `false`, writing
    /// nothing, when the session has ended meanwhile (its payout address may be another
    /// session's by now).
    pub fn accept_payment(
        &self,
        session_id: &str,
        payment_id: u64,
        tx: &Transaction,
        terms: StoredTerms,
        checked: &CheckedTx,
    ) -> Result<bool> {
        persist("socket-accept-payment", || {
            let db = self.db.unchecked_transaction()?;
            let open: bool = db
                .query_row(
                    "SELECT ended_at_unix_ms IS NULL FROM sessions WHERE id = ?1",
                    params![session_id],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            if !open {
                return Ok(false);
            }
            insert_payment(
                &db,
                PaymentStatus::Accepted,
                session_id,
                payment_id,
                tx,
                terms,
                checked.fee,
                checked.vsize,
            )?;
            insert_parents(&db, &tx.compute_txid(), &checked.parents)?;
            db.commit()?;
            Ok(true)
        })
    }

    /// The unconfirmed parents kept with `child` (empty: none, or kept before version 12).
    pub fn parents_of(&self, child: &Txid) -> Result<Vec<Transaction>> {
        let mut statement = self.db.prepare(
            "SELECT p.tx_hex FROM tx_parents c JOIN parent_txs p ON p.txid = c.parent_txid
                 WHERE c.child_txid = ?1",
        )?;
        let rows = statement.query_map(params![child.to_string()], |r| r.get::<_, String>(0))?;
        rows.map(|hex| {
            hex.and_then(|h| {
                encode::deserialize_hex(&h).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            })
        })
        .collect()
    }

    /// Mark a payment `broadcast` or `failed`.
    pub fn set_payment_status(
        &self,
        session_id: &str,
        payment_id: u64,
        status: PaymentStatus,
    ) -> Result<()> {
        persist("socket-set-payment-status", || {
            self.db.execute(
                "UPDATE payments SET status = ?3 WHERE session_id = ?1 AND payment_id = ?2",
                params![session_id, payment_id as i64, status],
            )?;
            Ok(())
        })
    }

    /// A payment, if recorded.
    pub fn payment(&self, session_id: &str, payment_id: u64) -> Result<Option<StoredPayment>> {
        self.db
            .query_row(
                "SELECT session_id, payment_id, tx_hex, status, quota_mwh, amount_sat FROM payments
                 WHERE session_id = ?1 AND payment_id = ?2",
                params![session_id, payment_id as i64],
                payment_row,
            )
            .optional()
    }

    /// Payments persisted but not yet broadcast (after a crash), oldest first.
    pub fn unbroadcast_payments(&self) -> Result<Vec<StoredPayment>> {
        let mut statement = self.db.prepare(
            "SELECT session_id, payment_id, tx_hex, status, quota_mwh, amount_sat FROM payments
             WHERE status = 'accepted' ORDER BY accepted_at_unix_ms",
        )?;
        let rows = statement.query_map([], payment_row)?;
        rows.collect()
    }

    /// `onchain` payments credited and not yet final, broadcast or not (bitcoind did not answer
    /// their broadcast): what the chain watch follows.
    pub fn watched_payments(&self) -> Result<Vec<StoredPayment>> {
        let mut statement = self.db.prepare(
            "SELECT session_id, payment_id, tx_hex, status, quota_mwh, amount_sat FROM payments
             WHERE status IN ('accepted', 'broadcast') ORDER BY accepted_at_unix_ms",
        )?;
        let rows = statement.query_map([], payment_row)?;
        rows.collect()
    }

    /// Txids of a session's payments that did not fail, by payment id.
    pub fn payment_txids(&self, session_id: &str) -> Result<Vec<Txid>> {
        let mut statement = self.db.prepare(
            "SELECT txid FROM payments WHERE session_id = ?1 AND status != 'failed' ORDER BY payment_id",
        )?;
        let rows = statement.query_map(params![session_id], |r| r.get::<_, String>(0))?;
        rows.map(|txid| {
            txid.and_then(|t| {
                t.parse().map_err(|e: bitcoin::hex::HexToArrayError| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            })
        })
        .collect()
    }
}
