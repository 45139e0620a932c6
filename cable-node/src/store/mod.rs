//! The cable's SQLite store, `<data dir>/cable.sqlite`: sessions and every payment it signed.
//!
//! A payment is stored (status `signed`) before its PSBT leaves the cable. If the reply is lost,
//! the same PSBT is sent again for the same payment id: the cable never signs twice for one
//! quota.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::{Amount, OutPoint, ScriptBuf, Txid};
use rusqlite::{params, Connection, OptionalExtension};

/// The schema, one migration per version, oldest first; append, never edit (SQLite's
/// `user_version` holds the version: an older data dir is upgraded in place when the store
/// opens, a newer one is refused). Version 1 is the schema before versions existed; its
/// `IF NOT EXISTS` lets such a data dir take it as is.
pub const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4];

mod persist;
mod sockets;

use persist::persist;
pub use sockets::{SocketRow, SocketStatus};

/// Version 4: the payout script of each session (the offer's when it opened). A session the
/// cable resumes after a restart is checked against it: the socket offers the next session's
/// address by then.
const SCHEMA_V4: &str = "
ALTER TABLE sessions ADD COLUMN payout_script_hex TEXT;
";

/// Version 3 (design.md "Attestation"): the receipts the cable countersigned (socket.proto
/// `MeteringReceipt`) and its registry of sockets, with the ones it caught over-counting.
const SCHEMA_V3: &str = "
CREATE TABLE receipts (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    -- The sequence of the socket's status inside it.
    socket_sequence INTEGER NOT NULL,
    socket_energy_mwh INTEGER NOT NULL,
    cable_energy_mwh INTEGER NOT NULL,
    -- MeteringReceipt.body and .signature, as sent.
    body BLOB NOT NULL,
    signature BLOB NOT NULL,
    signed_at_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, socket_sequence)
);
CREATE TABLE sockets (
    -- The socket's identity key, 33-byte compressed, hex.
    identity_key TEXT PRIMARY KEY,
    first_seen_unix_ms INTEGER NOT NULL,
    sessions INTEGER NOT NULL DEFAULT 0,
    -- 'flagged': caught over-counting; refused until its owner allows it again.
    status TEXT NOT NULL DEFAULT 'allowed' CHECK (status IN ('allowed', 'flagged')),
    reason TEXT,
    -- JSON: what the cable saw.
    evidence TEXT,
    since_unix_ms INTEGER
);
";

/// Version 2: the socket's signed status reports of each session (design.md "Trust"), kept as
/// received: proof of what the socket counted.
const SCHEMA_V2: &str = "
CREATE TABLE status_reports (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    sequence INTEGER NOT NULL,
    state TEXT NOT NULL,
    energy_used_mwh INTEGER NOT NULL,
    quota_remaining_mwh INTEGER NOT NULL,
    time_unix_ms INTEGER NOT NULL,
    -- SignedStatus.report and .signature, the exact bytes received.
    report BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (session_id, sequence)
);
";

const SCHEMA_V1: &str = "
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
CREATE TABLE IF NOT EXISTS ln_payments (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    payment_id INTEGER NOT NULL,
    payment_hash TEXT NOT NULL UNIQUE,
    amount_msat INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('sending', 'paid', 'failed')),
    latency_ms INTEGER,
    -- keysend: the preimage the cable chose, kept so that a keysend cut short is sent again
    -- with the same payment hash (never a second payment for one quota).
    keysend_preimage_hex TEXT,
    PRIMARY KEY (session_id, payment_id)
);
-- spillman channels (seed 003): the channel key, the terms, the deposit, and the fully signed
-- refund, stored before the deposit is handed over.
CREATE TABLE IF NOT EXISTS spillman_channels (
    deposit_txid TEXT PRIMARY KEY,
    session_id TEXT,
    secret_hex TEXT NOT NULL,
    socket_key_hex TEXT NOT NULL,
    deposit_vout INTEGER NOT NULL,
    deposit_sat INTEGER NOT NULL,
    refund_lock_height INTEGER NOT NULL,
    fee_sat INTEGER NOT NULL,
    cable_script_hex TEXT NOT NULL,
    socket_script_hex TEXT NOT NULL,
    deposit_tx_hex TEXT NOT NULL,
    refund_tx_hex TEXT,
    -- 'proposed': nothing signed by the socket yet; 'refund-signed': the refund is ours, the
    -- deposit may be out; 'funded': the socket took the deposit; 'closed': the deposit was
    -- spent (the socket's close); 'refunded': we took the refund; 'abandoned': never funded.
    status TEXT NOT NULL CHECK (status IN ('proposed', 'refund-signed', 'funded', 'closed', 'refunded', 'abandoned'))
);
CREATE TABLE IF NOT EXISTS single_fee_sets (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    set_index INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    fee_sat INTEGER NOT NULL,
    max_sat INTEGER NOT NULL,
    increment_sat INTEGER NOT NULL,
    payout_script_hex TEXT NOT NULL,
    highest_value_sat INTEGER NOT NULL,
    highest_payment_id INTEGER NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, set_index)
);
";

/// A spillman channel as the cable stored it.
#[derive(Debug, Clone)]
pub struct CableChannel {
    /// The session the socket opened for it, once it did.
    pub session_id: Option<String>,
    /// The cable's channel key.
    pub secret: bitcoin::secp256k1::SecretKey,
    /// The terms.
    pub channel: proto::spillman::Channel,
    /// The signed deposit.
    pub deposit: bitcoin::Transaction,
    /// The fully signed refund, once the socket signed it.
    pub refund: Option<bitcoin::Transaction>,
    /// See the table.
    pub status: String,
}

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

/// The store.
pub struct CableStore {
    db: Connection,
}

type Result<T> = std::result::Result<T, rusqlite::Error>;

impl CableStore {
    /// Open (and create, or upgrade to the current schema version) the store of `data_dir`.
    /// Errors: SQLite's, or a schema of a newer cable-node.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let mut db = Connection::open(data_dir.join("cable.sqlite"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        rusqlite_migration::Migrations::new(
            MIGRATIONS
                .iter()
                .map(|sql| rusqlite_migration::M::up(sql))
                .collect(),
        )
        .to_latest(&mut db)?;
        Ok(CableStore { db })
    }

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

    /// Store a signed payment before it is sent.
    pub fn record_signed(&self, session_id: &str, record: &SignedRecord) -> Result<()> {
        persist("cable-record-signed", || {
            insert_payment(&self.db, session_id, record)
        })
    }

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

    /// Record a channel the cable proposes, before its key leaves (seed 003 step 6).
    pub fn propose_channel(
        &self,
        secret: &bitcoin::secp256k1::SecretKey,
        channel: &proto::spillman::Channel,
        deposit: &bitcoin::Transaction,
    ) -> Result<()> {
        persist("cable-propose-channel", || {
            use bitcoin::hex::DisplayHex;
            self.db.execute(
                "INSERT INTO spillman_channels (deposit_txid, secret_hex, socket_key_hex, deposit_vout,
                     deposit_sat, refund_lock_height, fee_sat, cable_script_hex, socket_script_hex,
                     deposit_tx_hex, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'proposed')",
                params![
                    channel.deposit.txid.to_string(),
                    secret.secret_bytes().to_lower_hex_string(),
                    channel.socket_key.to_string(),
                    channel.deposit.vout,
                    channel.deposit_value.to_sat() as i64,
                    channel.refund_lock_height,
                    channel.fee.to_sat() as i64,
                    channel.cable_script.to_hex_string(),
                    channel.socket_script.to_hex_string(),
                    bitcoin::consensus::encode::serialize_hex(deposit),
                ],
            )?;
            Ok(())
        })
    }

    /// Record the fully signed refund and the session, before the deposit is handed over
    /// (step 9).
    pub fn refund_signed(
        &self,
        deposit_txid: &str,
        session_id: &str,
        refund: &bitcoin::Transaction,
    ) -> Result<()> {
        persist("cable-refund-signed", || {
            self.db.execute(
                "UPDATE spillman_channels SET session_id = ?2, refund_tx_hex = ?3,
                     status = 'refund-signed'
                 WHERE deposit_txid = ?1",
                params![
                    deposit_txid,
                    session_id,
                    bitcoin::consensus::encode::serialize_hex(refund)
                ],
            )?;
            Ok(())
        })
    }

    /// Set a channel's status.
    pub fn set_channel_status(&self, deposit_txid: &str, status: &str) -> Result<()> {
        persist("cable-set-channel-status", || {
            self.db.execute(
                "UPDATE spillman_channels SET status = ?2 WHERE deposit_txid = ?1",
                params![deposit_txid, status],
            )?;
            Ok(())
        })
    }

    /// The channel of a session, if any.
    pub fn channel_of_session(&self, session_id: &str) -> Result<Option<CableChannel>> {
        Ok(self
            .channels("WHERE session_id = ?1", params![session_id])?
            .pop())
    }

    /// Channels whose refund is held and not used: the deposit may be out.
    pub fn refundable_channels(&self) -> Result<Vec<CableChannel>> {
        self.channels("WHERE status IN ('refund-signed', 'funded')", params![])
    }

    fn channels(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<CableChannel>> {
        use bitcoin::consensus::encode::deserialize_hex;
        let mut statement = self.db.prepare(&format!(
            "SELECT deposit_txid, session_id, secret_hex, socket_key_hex, deposit_vout,
                    deposit_sat, refund_lock_height, fee_sat, cable_script_hex,
                    socket_script_hex, deposit_tx_hex, refund_tx_hex, status
             FROM spillman_channels {filter}"
        ))?;
        let rows = statement.query_map(args, |r| {
            let bad = |i: usize, e: String| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            };
            let text = |i: usize| r.get::<_, String>(i);
            let secret: [u8; 32] = bitcoin::hex::FromHex::from_hex(&text(2)?)
                .map_err(|e: bitcoin::hex::HexToArrayError| bad(2, e.to_string()))?;
            let refund: Option<String> = r.get(11)?;
            let cable_secret = bitcoin::secp256k1::SecretKey::from_slice(&secret)
                .map_err(|e| bad(2, e.to_string()))?;
            Ok(CableChannel {
                session_id: r.get(1)?,
                secret: cable_secret,
                channel: proto::spillman::Channel {
                    cable_key: bitcoin::PublicKey::new(
                        cable_secret.public_key(&bitcoin::secp256k1::Secp256k1::signing_only()),
                    ),
                    socket_key: text(3)?
                        .parse()
                        .map_err(|e: bitcoin::key::ParsePublicKeyError| bad(3, e.to_string()))?,
                    deposit: bitcoin::OutPoint::new(
                        text(0)?
                            .parse()
                            .map_err(|e: bitcoin::hex::HexToArrayError| bad(0, e.to_string()))?,
                        r.get(4)?,
                    ),
                    deposit_value: Amount::from_sat(r.get::<_, i64>(5)? as u64),
                    refund_lock_height: r.get(6)?,
                    fee: Amount::from_sat(r.get::<_, i64>(7)? as u64),
                    cable_script: bitcoin::ScriptBuf::from_hex(&text(8)?)
                        .map_err(|e| bad(8, e.to_string()))?,
                    socket_script: bitcoin::ScriptBuf::from_hex(&text(9)?)
                        .map_err(|e| bad(9, e.to_string()))?,
                },
                deposit: deserialize_hex(&text(10)?).map_err(|e| bad(10, e.to_string()))?,
                refund: refund
                    .map(|hex| deserialize_hex(&hex))
                    .transpose()
                    .map_err(|e| bad(11, e.to_string()))?,
                status: r.get(12)?,
            })
        })?;
        rows.collect()
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

fn insert_payment(db: &Connection, session_id: &str, record: &SignedRecord) -> Result<()> {
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
