//! single-fee input sets (paper §VI): opened, the latest held, broadcast, confirmed.

use bitcoin::consensus::encode;
use bitcoin::{Amount, Transaction};
use rusqlite::params;

use super::payments::insert_payment;
use super::persist;
use super::{unix_ms, CheckedTx, PaymentStatus, Result, SetStatus, Store, StoredTerms};

/// A single-fee input set as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSet {
    /// Session id.
    pub session_id: String,
    /// Index of the set within the session, from 1.
    pub index: u32,
    /// Increment of each payment.
    pub increment: Amount,
    /// Maximum value of the set.
    pub max: Amount,
    /// Fee of the set, once its first transaction is held.
    pub fee: Option<Amount>,
    /// The latest transaction held.
    pub latest: Option<Transaction>,
    /// Its status.
    pub status: SetStatus,
    /// When it was opened.
    pub opened_at_unix_ms: i64,
}

impl Store {
    /// Open a single-fee input set.
    pub fn open_set(
        &self,
        session_id: &str,
        index: u32,
        increment: Amount,
        max: Amount,
    ) -> Result<()> {
        persist("socket-open-set", || {
            self.db.execute(
                "INSERT INTO single_fee_sets (session_id, set_index, increment_sat, max_sat, status,
                                              opened_at_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, 'open', ?5)",
                params![
                    session_id,
                    index as i64,
                    increment.to_sat() as i64,
                    max.to_sat() as i64,
                    unix_ms()
                ],
            )?;
            Ok(())
        })
    }

    /// Hold a single-fee payment: in one SQLite transaction, record the payment (status `held`,
    /// credited) with its unconfirmed parents and make `tx` the set's latest, replacing the one
    /// before.
    #[allow(clippy::too_many_arguments)]
    pub fn hold_single_fee(
        &mut self,
        session_id: &str,
        payment_id: u64,
        set_index: u32,
        tx: &Transaction,
        terms: StoredTerms,
        value: Amount,
        checked: &CheckedTx,
    ) -> Result<()> {
        let fee = checked.fee;
        persist("socket-hold-single-fee", || {
            let db = self.db.transaction()?;
            insert_payment(
                &db,
                PaymentStatus::Held,
                session_id,
                payment_id,
                tx,
                terms,
                fee,
                checked.vsize,
            )?;
            super::payments::insert_parents(&db, &tx.compute_txid(), &checked.parents)?;
            db.execute(
                "UPDATE single_fee_sets SET latest_tx_hex = ?3, latest_value_sat = ?4, fee_sat = ?5
                 WHERE session_id = ?1 AND set_index = ?2 AND status = 'open'",
                params![
                    session_id,
                    set_index as i64,
                    encode::serialize_hex(tx),
                    value.to_sat() as i64,
                    fee.to_sat() as i64
                ],
            )?;
            db.commit()
        })
    }

    /// Record how a set ended: `empty` (no `tx`), `broadcast` with `tx`, the transaction the
    /// socket sent, or `failed` with `tx`, the one it held when a named transaction replaced
    /// it. `tx` becomes the set's latest, the one the chain watch follows (a payment held after
    /// the outlet closed the set, racing the close, was never sent and is not followed).
    pub fn close_set(
        &self,
        session_id: &str,
        index: u32,
        status: SetStatus,
        tx: Option<&Transaction>,
    ) -> Result<()> {
        persist("socket-close-set", || {
            self.db.execute(
                "UPDATE single_fee_sets SET status = ?3, txid = ?4,
                     latest_tx_hex = COALESCE(?5, latest_tx_hex)
                 WHERE session_id = ?1 AND set_index = ?2",
                params![
                    session_id,
                    index as i64,
                    status,
                    tx.map(|t| t.compute_txid().to_string()),
                    tx.map(encode::serialize_hex)
                ],
            )?;
            Ok(())
        })
    }

    /// Record the height at which a set's transaction confirmed (no longer counted
    /// unconfirmed; watched until `final_confirmations` deep), or `None`: its block was
    /// reorganized away.
    pub fn set_confirmed(&self, session_id: &str, index: u32, height: Option<u32>) -> Result<()> {
        persist("socket-set-confirmed", || {
            self.db.execute(
                "UPDATE single_fee_sets SET confirmed_height = ?3 WHERE session_id = ?1 AND set_index = ?2",
                params![session_id, index as i64, height.map(i64::from)],
            )?;
            Ok(())
        })
    }

    /// Sets still open (held, not broadcast), oldest first.
    pub fn open_sets(&self) -> Result<Vec<StoredSet>> {
        self.sets_where("status = 'open' ORDER BY opened_at_unix_ms", &[])
    }

    /// Sets closed and sent (status `broadcast`) whose latest transaction is not yet final at
    /// chain height `tip`: unconfirmed, or confirmed less than `final_confirmations` deep. The
    /// chain watch follows them, with the height each was first seen confirmed.
    pub fn sets_not_final(
        &self,
        tip: u32,
        final_confirmations: u32,
    ) -> Result<Vec<(StoredSet, Option<u32>)>> {
        let final_height = i64::from(tip) + 1 - i64::from(final_confirmations);
        let sets = self.sets_where(
            "status = 'broadcast' AND latest_tx_hex IS NOT NULL
             AND (confirmed_height IS NULL OR confirmed_height > ?1)
             ORDER BY opened_at_unix_ms",
            &[&final_height],
        )?;
        sets.into_iter()
            .map(|set| {
                let height: Option<i64> = self.db.query_row(
                    "SELECT confirmed_height FROM single_fee_sets
                     WHERE session_id = ?1 AND set_index = ?2",
                    params![set.session_id, set.index as i64],
                    |r| r.get(0),
                )?;
                Ok((set, height.map(|h| h as u32)))
            })
            .collect()
    }

    /// The latest set of a session, if any.
    pub fn last_set(&self, session_id: &str) -> Result<Option<StoredSet>> {
        let mut sets = self.sets_where(
            "session_id = ?1 ORDER BY set_index DESC LIMIT 1",
            &[&session_id],
        )?;
        Ok(sets.pop())
    }

    fn sets_where(
        &self,
        condition: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<StoredSet>> {
        let mut statement = self.db.prepare(&format!(
            "SELECT session_id, set_index, increment_sat, max_sat, fee_sat, latest_tx_hex, status,
                    opened_at_unix_ms
             FROM single_fee_sets WHERE {condition}"
        ))?;
        let rows = statement.query_map(params, |r| {
            let latest: Option<String> = r.get(5)?;
            let latest = latest
                .map(|hex| encode::deserialize_hex(&hex))
                .transpose()
                .map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        5,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?;
            Ok(StoredSet {
                session_id: r.get(0)?,
                index: r.get::<_, i64>(1)? as u32,
                increment: Amount::from_sat(r.get::<_, i64>(2)? as u64),
                max: Amount::from_sat(r.get::<_, i64>(3)? as u64),
                fee: r
                    .get::<_, Option<i64>>(4)?
                    .map(|f| Amount::from_sat(f as u64)),
                latest,
                status: r.get(6)?,
                opened_at_unix_ms: r.get(7)?,
            })
        })?;
        rows.collect()
    }
}
