//! The cable's SQLite store, `<data dir>/cable.sqlite`: sessions and every payment it signed.
//!
//! A payment is stored (status `signed`) before its PSBT leaves the cable. If the reply is lost,
//! the same PSBT is sent again for the same payment id: the cable never signs twice for one
//! quota.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::{Amount, Txid};
use rusqlite::{params, Connection, OptionalExtension};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    socket_identity_key TEXT NOT NULL,
    outlet_id TEXT NOT NULL,
    started_at_unix_ms INTEGER NOT NULL,
    ended_at_unix_ms INTEGER,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS payments (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    payment_id INTEGER NOT NULL,
    txid TEXT NOT NULL,
    psbt BLOB NOT NULL,
    amount_sat INTEGER NOT NULL,
    fee_sat INTEGER NOT NULL,
    vsize INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('signed', 'accepted', 'refused')),
    signed_at_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, payment_id)
);
";

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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

/// The store.
pub struct CableStore {
    db: Connection,
}

type Result<T> = std::result::Result<T, rusqlite::Error>;

impl CableStore {
    /// Open (and create) the store of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let db = Connection::open(data_dir.join("cable.sqlite"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.execute_batch(SCHEMA)?;
        Ok(CableStore { db })
    }

    /// Record a session the socket opened (idempotent).
    pub fn open_session(&self, id: &str, socket_identity_key: &str, outlet_id: &str) -> Result<()> {
        self.db.execute(
            "INSERT OR IGNORE INTO sessions (id, socket_identity_key, outlet_id, started_at_unix_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![id, socket_identity_key, outlet_id, unix_ms()],
        )?;
        Ok(())
    }

    /// Close a session with its outcome.
    pub fn end_session(&self, id: &str, outcome: &str) -> Result<()> {
        self.db.execute(
            "UPDATE sessions SET ended_at_unix_ms = ?2, outcome = ?3 WHERE id = ?1",
            params![id, unix_ms(), outcome],
        )?;
        Ok(())
    }

    /// Store a signed payment before it is sent.
    pub fn record_signed(&self, session_id: &str, record: &SignedRecord) -> Result<()> {
        self.db.execute(
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

    /// Set a payment's status to `accepted` or `refused`.
    pub fn set_status(&self, session_id: &str, payment_id: u64, status: &str) -> Result<()> {
        self.db.execute(
            "UPDATE payments SET status = ?3 WHERE session_id = ?1 AND payment_id = ?2",
            params![session_id, payment_id as i64, status],
        )?;
        Ok(())
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
