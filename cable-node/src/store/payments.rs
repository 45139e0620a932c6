//! The on-chain payments the cable signed (`onchain` and `single-fee`), stored before they
//! are sent, and the socket's answer to each.

use bitcoin::{Amount, Txid};
use rusqlite::{params, Connection, OptionalExtension};

use super::persist;
use super::{unix_ms, CableStore, Result};

/// A payment the cable signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    /// Payment id within the session.
    pub payment_id: u64,
    /// Transaction id.
    pub txid: Txid,
    /// Amount paid to the socket.
    pub amount: Amount,
    /// Fee paid to miners.
    pub fee: Amount,
    /// Virtual size in vbytes.
    pub vsize: u64,
    /// `signed`, `accepted` or `refused`.
    pub status: String,
    /// The finalized PSBT as sent.
    pub psbt: Vec<u8>,
}

impl CableStore {
    /// Store a signed payment before it is sent.
    pub fn record_signed(&self, session_id: &str, record: &SignedRecord) -> Result<()> {
        persist("cable-record-signed", || {
            insert_payment(&self.db, session_id, record)
        })
    }

    /// Set a payment's status to `accepted` or `refused`.
    pub fn set_status(&self, session_id: &str, payment_id: u64, status: &str) -> Result<()> {
        persist("cable-set-status", || {
            self.db.execute(
                "UPDATE payments SET status = ?3 WHERE session_id = ?1 AND payment_id = ?2",
                params![session_id, payment_id as i64, status],
            )?;
            Ok(())
        })
    }

    /// The payment signed for `payment_id` of a session, if any.
    pub fn payment(&self, session_id: &str, payment_id: u64) -> Result<Option<SignedRecord>> {
        self.db
            .query_row(
                "SELECT payment_id, txid, amount_sat, fee_sat, vsize, status, psbt FROM payments
                 WHERE session_id = ?1 AND payment_id = ?2",
                params![session_id, payment_id as i64],
                record_row,
            )
            .optional()
    }

    /// All payments of a session, by payment id.
    pub fn payments(&self, session_id: &str) -> Result<Vec<SignedRecord>> {
        let mut statement = self.db.prepare(
            "SELECT payment_id, txid, amount_sat, fee_sat, vsize, status, psbt FROM payments
             WHERE session_id = ?1 ORDER BY payment_id",
        )?;
        let rows = statement.query_map(params![session_id], record_row)?;
        rows.collect()
    }
}

/// Insert a signed payment (status `signed`) of `session_id` through `db`.
pub(super) fn insert_payment(
    db: &Connection,
    session_id: &str,
    record: &SignedRecord,
) -> Result<()> {
    db.execute(
        "INSERT INTO payments (session_id, payment_id, txid, psbt, amount_sat, fee_sat, vsize,
                               status, signed_at_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'signed', ?8)",
        params![
            session_id,
            record.payment_id as i64,
            record.txid.to_string(),
            record.psbt,
            record.amount.to_sat() as i64,
            record.fee.to_sat() as i64,
            record.vsize as i64,
            unix_ms()
        ],
    )?;
    Ok(())
}

fn record_row(r: &rusqlite::Row<'_>) -> Result<SignedRecord> {
    let txid: String = r.get(1)?;
    Ok(SignedRecord {
        payment_id: r.get::<_, i64>(0)? as u64,
        txid: txid.parse().map_err(|e: bitcoin::hex::HexToArrayError| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?,
        amount: Amount::from_sat(r.get::<_, i64>(2)? as u64),
        fee: Amount::from_sat(r.get::<_, i64>(3)? as u64),
        vsize: r.get::<_, i64>(4)? as u64,
        status: r.get(5)?,
        psbt: r.get(6)?,
    })
}
