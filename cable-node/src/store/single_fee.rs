//! The cable's single-fee input sets: each set with its highest signature, opened, raised and
//! closed together with the payment it signs.

use bitcoin::{Amount, OutPoint, ScriptBuf};
use rusqlite::{params, OptionalExtension};

use super::payments::{insert_payment, SignedRecord};
use super::persist;
use super::{CableStore, Result};

/// A single-fee input set of the cable (paper seed 000 §VI: "the cable must remember the inputs
/// used and the highest signed value").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CableSet {
    /// Session id.
    pub session_id: String,
    /// Index of the set within the session, from 1.
    pub index: u32,
    /// The inputs every transaction of the set spends (sorted).
    pub inputs: Vec<OutPoint>,
    /// The fee every transaction of the set pays.
    pub fee: Amount,
    /// The set's maximum value.
    pub max: Amount,
    /// Each payment's increment.
    pub increment: Amount,
    /// The socket's payout script.
    pub payout_script: ScriptBuf,
    /// The highest value signed.
    pub highest: Amount,
    /// The payment id of that signature.
    pub highest_payment_id: u64,
}

impl CableStore {
    /// Store the first signature of a new input set together with the set (one SQLite
    /// transaction), before it is sent.
    pub fn open_set(&mut self, set: &CableSet, record: &SignedRecord) -> Result<()> {
        persist("cable-open-set", || {
            let db = self.db.transaction()?;
            let inputs: Vec<String> = set.inputs.iter().map(ToString::to_string).collect();
            db.execute(
                "INSERT INTO single_fee_sets (session_id, set_index, inputs, fee_sat, max_sat,
                     increment_sat, payout_script_hex, highest_value_sat, highest_payment_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    set.session_id,
                    set.index as i64,
                    inputs.join(","),
                    set.fee.to_sat() as i64,
                    set.max.to_sat() as i64,
                    set.increment.to_sat() as i64,
                    set.payout_script.to_hex_string(),
                    set.highest.to_sat() as i64,
                    set.highest_payment_id as i64
                ],
            )?;
            insert_payment(&db, &set.session_id, record)?;
            db.commit()
        })
    }

    /// Store a higher signature of an open set (one SQLite transaction), before it is sent.
    /// Refuses (no row changes) unless `value` is above the highest stored.
    pub fn raise_set(
        &mut self,
        set: &CableSet,
        value: Amount,
        record: &SignedRecord,
    ) -> Result<()> {
        persist("cable-raise-set", || {
            let db = self.db.transaction()?;
            let raised = db.execute(
                "UPDATE single_fee_sets SET highest_value_sat = ?3, highest_payment_id = ?4
                 WHERE session_id = ?1 AND set_index = ?2 AND highest_value_sat < ?3 AND closed = 0",
                params![
                    set.session_id,
                    set.index as i64,
                    value.to_sat() as i64,
                    record.payment_id as i64
                ],
            )?;
            if raised != 1 {
                return Err(rusqlite::Error::StatementChangedRows(raised));
            }
            insert_payment(&db, &set.session_id, record)?;
            db.commit()
        })
    }

    /// The open input set of a session, if any.
    pub fn current_set(&self, session_id: &str) -> Result<Option<CableSet>> {
        self.db
            .query_row(
                "SELECT session_id, set_index, inputs, fee_sat, max_sat, increment_sat,
                        payout_script_hex, highest_value_sat, highest_payment_id
                 FROM single_fee_sets WHERE session_id = ?1 AND closed = 0
                 ORDER BY set_index DESC LIMIT 1",
                params![session_id],
                |r| {
                    let conversion = |i, e: Box<dyn std::error::Error + Send + Sync>| {
                        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e)
                    };
                    let inputs: String = r.get(2)?;
                    let mut inputs = inputs
                        .split(',')
                        .map(|o| {
                            o.parse::<OutPoint>()
                                .map_err(|e| conversion(2, Box::new(e)))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    inputs.sort();
                    let script: String = r.get(6)?;
                    Ok(CableSet {
                        session_id: r.get(0)?,
                        index: r.get::<_, i64>(1)? as u32,
                        inputs,
                        fee: Amount::from_sat(r.get::<_, i64>(3)? as u64),
                        max: Amount::from_sat(r.get::<_, i64>(4)? as u64),
                        increment: Amount::from_sat(r.get::<_, i64>(5)? as u64),
                        payout_script: ScriptBuf::from_hex(&script)
                            .map_err(|e| conversion(6, Box::new(e)))?,
                        highest: Amount::from_sat(r.get::<_, i64>(7)? as u64),
                        highest_payment_id: r.get::<_, i64>(8)? as u64,
                    })
                },
            )
            .optional()
    }

    /// The highest input set index of `session_id`, open or closed (0: none yet). A new set
    /// takes the next: after a restart the last set may be closed already.
    pub fn last_set_index(&self, session_id: &str) -> Result<u32> {
        self.db.query_row(
            "SELECT COALESCE(MAX(set_index), 0) FROM single_fee_sets WHERE session_id = ?1",
            params![session_id],
            |r| r.get::<_, i64>(0).map(|i| i as u32),
        )
    }

    /// Close an input set (its highest transaction was broadcast).
    pub fn close_set(&self, session_id: &str, index: u32) -> Result<()> {
        persist("cable-close-set", || {
            self.db.execute(
                "UPDATE single_fee_sets SET closed = 1 WHERE session_id = ?1 AND set_index = ?2",
                params![session_id, index as i64],
            )?;
            Ok(())
        })
    }
}
