//! The socket's SQLite store, `<data dir>/socket.sqlite` (design.md, "Storage").
//!
//! A session's credited energy is never stored as a counter: it is the sum of the quotas of its
//! payments that did not fail, and a payment's key is `(session_id, payment_id)`. A replayed or
//! resent payment therefore cannot be credited twice, also across crashes. Every row that grants
//! energy is committed before the reply that grants it.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::consensus::encode;
use bitcoin::{Amount, ScriptBuf, Transaction, Txid};
use proto::spillman::Channel;
use proto::units::EnergyMwh;
use rusqlite::{params, Connection, OptionalExtension};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    outlet_id TEXT NOT NULL,
    scheme TEXT NOT NULL,
    started_at_unix_ms INTEGER NOT NULL,
    ended_at_unix_ms INTEGER,
    end_reason TEXT,
    energy_used_mwh INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS terms (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    payment_id INTEGER NOT NULL,
    amount_sat INTEGER NOT NULL,
    quota_mwh INTEGER NOT NULL,
    issued_at_unix_ms INTEGER NOT NULL,
    -- single-fee: the input set and the whole value the transaction must pay.
    set_index INTEGER,
    value_sat INTEGER,
    PRIMARY KEY (session_id, payment_id)
);
CREATE TABLE IF NOT EXISTS single_fee_sets (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    set_index INTEGER NOT NULL,
    increment_sat INTEGER NOT NULL,
    max_sat INTEGER NOT NULL,
    fee_sat INTEGER,
    latest_tx_hex TEXT,
    latest_value_sat INTEGER NOT NULL DEFAULT 0,
    -- 'empty': closed before any payment, nothing to broadcast.
    status TEXT NOT NULL CHECK (status IN ('open', 'broadcast', 'failed', 'empty')),
    txid TEXT,
    confirmed_height INTEGER,
    opened_at_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, set_index)
);
CREATE TABLE IF NOT EXISTS payments (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    payment_id INTEGER NOT NULL,
    txid TEXT NOT NULL,
    tx_hex TEXT NOT NULL,
    amount_sat INTEGER NOT NULL,
    quota_mwh INTEGER NOT NULL,
    fee_sat INTEGER NOT NULL,
    vsize INTEGER NOT NULL,
    -- 'held': a single-fee payment kept, not broadcast (its set is).
    status TEXT NOT NULL CHECK (status IN ('accepted', 'broadcast', 'failed', 'held')),
    accepted_at_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, payment_id),
    FOREIGN KEY (session_id, payment_id) REFERENCES terms(session_id, payment_id)
);
CREATE TABLE IF NOT EXISTS ln_invoices (
    payment_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    payment_id INTEGER NOT NULL,
    bolt11 TEXT NOT NULL,
    amount_msat INTEGER NOT NULL,
    quota_mwh INTEGER NOT NULL,
    issued_at_unix_ms INTEGER NOT NULL,
    UNIQUE (session_id, payment_id)
);
-- Lightning payments received: for an invoice of ln_invoices, or a keysend naming the session.
CREATE TABLE IF NOT EXISTS ln_payments (
    payment_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    payment_id INTEGER NOT NULL,
    amount_msat INTEGER NOT NULL,
    quota_mwh INTEGER NOT NULL,
    received_at_unix_ms INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'invoice' CHECK (kind IN ('invoice', 'keysend')),
    UNIQUE (session_id, payment_id)
);
-- spillman channels (seed 003): the terms, the deposit once handed over, the highest payment.
CREATE TABLE IF NOT EXISTS spillman_channels (
    session_id TEXT PRIMARY KEY REFERENCES sessions(id),
    cable_key_hex TEXT NOT NULL,
    socket_key_hex TEXT NOT NULL,
    deposit_txid TEXT NOT NULL,
    deposit_vout INTEGER NOT NULL,
    deposit_sat INTEGER NOT NULL,
    refund_lock_height INTEGER NOT NULL,
    fee_sat INTEGER NOT NULL,
    cable_script_hex TEXT NOT NULL,
    socket_script_hex TEXT NOT NULL,
    deposit_tx_hex TEXT,
    highest_total_sat INTEGER NOT NULL DEFAULT 0,
    highest_tx_hex TEXT,
    highest_cable_signature_hex TEXT,
    -- 'refund-signed': waiting for the deposit; 'funded': open; 'closed': highest payment
    -- broadcast; 'unpaid': ended with no payment (the cable takes its refund); 'lost': the
    -- deposit was spent elsewhere (a double spend before it confirmed).
    status TEXT NOT NULL CHECK (status IN ('refund-signed', 'funded', 'closed', 'unpaid', 'lost')),
    close_txid TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    at_unix_ms INTEGER NOT NULL,
    outlet_id TEXT NOT NULL,
    session_id TEXT,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

/// Insert a payment row with `status`: `accepted` (broadcast by the socket) or `held` (kept
/// unbroadcast: a single-fee set's latest, a spillman channel's highest). Either counts as
/// credited.
#[allow(clippy::too_many_arguments)]
fn insert_payment(
    db: &Connection,
    status: &str,
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

/// A spillman channel as the socket stored it.
#[derive(Debug, Clone)]
pub struct StoredChannel {
    /// The session it pays for.
    pub session_id: String,
    /// Its terms.
    pub channel: Channel,
    /// `refund-signed`, `funded`, `closed` or `unpaid`.
    pub status: String,
    /// What the highest payment pays the socket.
    pub highest_total: Amount,
    /// The highest payment and the cable's signature of it, if any.
    pub highest: Option<(Transaction, bitcoin::ecdsa::Signature)>,
    /// The deposit, once handed over.
    pub deposit: Option<Transaction>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An open session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Session id.
    pub id: String,
    /// Energy delivered so far (as last saved).
    pub energy_used: EnergyMwh,
    /// Sum of the quotas of its payments that did not fail.
    pub credited: EnergyMwh,
    /// Number of such payments.
    pub payments: u64,
    /// The highest payment id issued in terms.
    pub last_payment_id: u64,
}

/// Terms issued for one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredTerms {
    /// Exact amount to pay (`onchain`), or the increment (`single-fee`).
    pub amount: Amount,
    /// Energy it buys.
    pub quota: EnergyMwh,
    /// `single-fee`: the input set and the whole value to pay.
    pub single_fee: Option<(u32, Amount)>,
}

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
    /// `open`, `broadcast` or `failed`.
    pub status: String,
    /// When it was opened.
    pub opened_at_unix_ms: i64,
}

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPayment {
    /// Session id.
    pub session_id: String,
    /// Payment id within the session.
    pub payment_id: u64,
    /// The transaction.
    pub tx: Transaction,
    /// `accepted` (persisted, not yet broadcast), `broadcast` or `failed`.
    pub status: String,
    /// Energy credited for it.
    pub quota: EnergyMwh,
}

/// The store.
pub struct Store {
    db: Connection,
}

type Result<T> = std::result::Result<T, rusqlite::Error>;

impl Store {
    /// Open (and create) the store of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let db = Connection::open(data_dir.join("socket.sqlite"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.execute_batch(SCHEMA)?;
        Ok(Store { db })
    }

    /// Record a new session.
    pub fn open_session(&self, id: &str, outlet_id: &str, scheme: &str) -> Result<()> {
        self.db.execute(
            "INSERT INTO sessions (id, outlet_id, scheme, started_at_unix_ms) VALUES (?1, ?2, ?3, ?4)",
            params![id, outlet_id, scheme, unix_ms()],
        )?;
        Ok(())
    }

    /// The scheme a session pays with, if the session exists.
    pub fn session_scheme(&self, session_id: &str) -> Result<Option<String>> {
        self.db
            .query_row(
                "SELECT scheme FROM sessions WHERE id = ?1",
                params![session_id],
                |r| r.get(0),
            )
            .optional()
    }

    /// Save the energy delivered so far in a session.
    pub fn save_energy(&self, session_id: &str, used: EnergyMwh) -> Result<()> {
        self.db.execute(
            "UPDATE sessions SET energy_used_mwh = ?2 WHERE id = ?1",
            params![session_id, used.0 as i64],
        )?;
        Ok(())
    }

    /// Close a session with its final energy and why it ended.
    pub fn end_session(&self, session_id: &str, used: EnergyMwh, reason: &str) -> Result<()> {
        self.db.execute(
            "UPDATE sessions SET ended_at_unix_ms = ?2, end_reason = ?3, energy_used_mwh = ?4
             WHERE id = ?1 AND ended_at_unix_ms IS NULL",
            params![session_id, unix_ms(), reason, used.0 as i64],
        )?;
        Ok(())
    }

    /// The session of `outlet_id` that has not ended, if any.
    pub fn open_session_of(&self, outlet_id: &str) -> Result<Option<StoredSession>> {
        let row = self
            .db
            .query_row(
                "SELECT id, energy_used_mwh FROM sessions
                 WHERE outlet_id = ?1 AND ended_at_unix_ms IS NULL
                 ORDER BY started_at_unix_ms DESC LIMIT 1",
                params![outlet_id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
        let Some((id, used)) = row else {
            return Ok(None);
        };
        let (credited, payments) = self.credit_of(&id)?;
        let last_payment_id: i64 = self.db.query_row(
            "SELECT COALESCE(MAX(payment_id), 0) FROM terms WHERE session_id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        Ok(Some(StoredSession {
            id,
            energy_used: EnergyMwh(used as u64),
            credited,
            payments,
            last_payment_id: last_payment_id as u64,
        }))
    }

    /// Energy credited to a session and the number of payments behind it (on chain and over
    /// Lightning).
    pub fn credit_of(&self, session_id: &str) -> Result<(EnergyMwh, u64)> {
        self.db.query_row(
            "SELECT COALESCE(SUM(quota_mwh), 0), COUNT(*) FROM (
                 SELECT quota_mwh FROM payments WHERE session_id = ?1 AND status != 'failed'
                 UNION ALL
                 SELECT quota_mwh FROM ln_payments WHERE session_id = ?1)",
            params![session_id],
            |r| {
                Ok((
                    EnergyMwh(r.get::<_, i64>(0)? as u64),
                    r.get::<_, i64>(1)? as u64,
                ))
            },
        )
    }

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

    /// Record the terms issued for a payment.
    pub fn issue_terms(&self, session_id: &str, payment_id: u64, terms: StoredTerms) -> Result<()> {
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

    /// Persist an accepted payment (status `accepted`) — before it is broadcast or credited.
    pub fn accept_payment(
        &self,
        session_id: &str,
        payment_id: u64,
        tx: &Transaction,
        terms: StoredTerms,
        fee: Amount,
        vsize: u64,
    ) -> Result<()> {
        insert_payment(
            &self.db, "accepted", session_id, payment_id, tx, terms, fee, vsize,
        )
    }

    /// Record a spillman channel whose refund the socket signs (seed 003 step 7).
    pub fn propose_channel(&self, session_id: &str, channel: &Channel) -> Result<()> {
        self.db.execute(
            "INSERT INTO spillman_channels (session_id, cable_key_hex, socket_key_hex,
                 deposit_txid, deposit_vout, deposit_sat, refund_lock_height, fee_sat,
                 cable_script_hex, socket_script_hex, status)
             VALUES (?1, ?2, ?10, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'refund-signed')",
            params![
                session_id,
                channel.cable_key.to_string(),
                channel.deposit.txid.to_string(),
                channel.deposit.vout,
                channel.deposit_value.to_sat() as i64,
                channel.refund_lock_height,
                channel.fee.to_sat() as i64,
                channel.cable_script.to_hex_string(),
                channel.socket_script.to_hex_string(),
                channel.socket_key.to_string(),
            ],
        )?;
        Ok(())
    }

    /// Record the deposit of a channel, before it is broadcast (step 10).
    pub fn fund_channel(&self, session_id: &str, deposit: &Transaction) -> Result<()> {
        self.db.execute(
            "UPDATE spillman_channels SET deposit_tx_hex = ?2, status = 'funded'
             WHERE session_id = ?1 AND status = 'refund-signed'",
            params![session_id, encode::serialize_hex(deposit)],
        )?;
        Ok(())
    }

    /// Hold a spillman payment as the channel's highest, with its payment row, in one SQLite
    /// transaction (steps 13–14): what is credited is what a close can broadcast.
    #[allow(clippy::too_many_arguments)]
    pub fn hold_channel_payment(
        &mut self,
        session_id: &str,
        payment_id: u64,
        tx: &Transaction,
        cable_signature: &bitcoin::ecdsa::Signature,
        total: Amount,
        terms: StoredTerms,
        fee: Amount,
    ) -> Result<()> {
        let db = self.db.transaction()?;
        insert_payment(
            &db,
            "held",
            session_id,
            payment_id,
            tx,
            terms,
            fee,
            tx.vsize() as u64,
        )?;
        db.execute(
            "UPDATE spillman_channels SET highest_total_sat = ?2, highest_tx_hex = ?3,
                 highest_cable_signature_hex = ?4
             WHERE session_id = ?1 AND status = 'funded'",
            params![
                session_id,
                total.to_sat() as i64,
                encode::serialize_hex(tx),
                cable_signature.to_string()
            ],
        )?;
        db.commit()
    }

    /// Mark a channel closed (its highest payment broadcast in `close_txid`) or unpaid.
    pub fn close_channel(
        &self,
        session_id: &str,
        status: &str,
        close_txid: Option<Txid>,
    ) -> Result<()> {
        self.db.execute(
            "UPDATE spillman_channels SET status = ?2, close_txid = ?3 WHERE session_id = ?1",
            params![session_id, status, close_txid.map(|t| t.to_string())],
        )?;
        Ok(())
    }

    /// The spillman channel of a session, if any.
    pub fn channel_of(&self, session_id: &str) -> Result<Option<StoredChannel>> {
        self.channels("WHERE session_id = ?1", params![session_id])
            .map(|mut all| all.pop())
    }

    /// The channels still open (funded, not closed), with whether their session ended.
    pub fn open_channels(&self) -> Result<Vec<(StoredChannel, bool)>> {
        let channels = self.channels("WHERE status = 'funded'", params![])?;
        channels
            .into_iter()
            .map(|c| {
                let ended: bool = self.db.query_row(
                    "SELECT ended_at_unix_ms IS NOT NULL FROM sessions WHERE id = ?1",
                    params![c.session_id],
                    |r| r.get(0),
                )?;
                Ok((c, ended))
            })
            .collect()
    }

    fn channels(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<StoredChannel>> {
        let mut statement = self.db.prepare(&format!(
            "SELECT session_id, cable_key_hex, deposit_txid, deposit_vout, deposit_sat,
                    refund_lock_height, fee_sat, cable_script_hex, socket_script_hex, status,
                    highest_total_sat, highest_tx_hex, highest_cable_signature_hex, socket_key_hex,
                    deposit_tx_hex
             FROM spillman_channels {filter}"
        ))?;
        let rows = statement.query_map(args, |r| {
            let bad = |i: usize, e: String| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            };
            let cable_key: String = r.get(1)?;
            let txid: String = r.get(2)?;
            let cable_script: String = r.get(7)?;
            let socket_script: String = r.get(8)?;
            let highest_tx: Option<String> = r.get(11)?;
            let highest_sig: Option<String> = r.get(12)?;
            let highest = match (highest_tx, highest_sig) {
                (Some(tx), Some(sig)) => Some((
                    encode::deserialize_hex(&tx).map_err(|e| bad(11, e.to_string()))?,
                    sig.parse()
                        .map_err(|e: bitcoin::ecdsa::Error| bad(12, e.to_string()))?,
                )),
                _ => None,
            };
            Ok(StoredChannel {
                session_id: r.get(0)?,
                channel: Channel {
                    cable_key: cable_key
                        .parse()
                        .map_err(|e: bitcoin::key::ParsePublicKeyError| bad(1, e.to_string()))?,
                    socket_key: r
                        .get::<_, String>(13)?
                        .parse()
                        .map_err(|e: bitcoin::key::ParsePublicKeyError| bad(13, e.to_string()))?,
                    deposit: bitcoin::OutPoint::new(
                        txid.parse()
                            .map_err(|e: bitcoin::hex::HexToArrayError| bad(2, e.to_string()))?,
                        r.get(3)?,
                    ),
                    deposit_value: Amount::from_sat(r.get::<_, i64>(4)? as u64),
                    refund_lock_height: r.get(5)?,
                    fee: Amount::from_sat(r.get::<_, i64>(6)? as u64),
                    cable_script: ScriptBuf::from_hex(&cable_script)
                        .map_err(|e| bad(7, e.to_string()))?,
                    socket_script: ScriptBuf::from_hex(&socket_script)
                        .map_err(|e| bad(8, e.to_string()))?,
                },
                status: r.get(9)?,
                highest_total: Amount::from_sat(r.get::<_, i64>(10)? as u64),
                highest,
                deposit: r
                    .get::<_, Option<String>>(14)?
                    .map(|hex| encode::deserialize_hex(&hex))
                    .transpose()
                    .map_err(|e| bad(14, e.to_string()))?,
            })
        })?;
        rows.collect()
    }

    /// Open a single-fee input set.
    pub fn open_set(
        &self,
        session_id: &str,
        index: u32,
        increment: Amount,
        max: Amount,
    ) -> Result<()> {
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
    }

    /// Hold a single-fee payment: in one SQLite transaction, record the payment (status `held`,
    /// credited) and make `tx` the set's latest, replacing the one before.
    #[allow(clippy::too_many_arguments)]
    pub fn hold_single_fee(
        &mut self,
        session_id: &str,
        payment_id: u64,
        set_index: u32,
        tx: &Transaction,
        terms: StoredTerms,
        value: Amount,
        fee: Amount,
        vsize: u64,
    ) -> Result<()> {
        let db = self.db.transaction()?;
        insert_payment(&db, "held", session_id, payment_id, tx, terms, fee, vsize)?;
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
    }

    /// Record how a set ended: `broadcast` with the txid sent, or `failed`.
    pub fn close_set(
        &self,
        session_id: &str,
        index: u32,
        status: &str,
        txid: Option<Txid>,
    ) -> Result<()> {
        self.db.execute(
            "UPDATE single_fee_sets SET status = ?3, txid = ?4 WHERE session_id = ?1 AND set_index = ?2",
            params![session_id, index as i64, status, txid.map(|t| t.to_string())],
        )?;
        Ok(())
    }

    /// Record the height at which a set's transaction confirmed.
    pub fn set_confirmed(&self, session_id: &str, index: u32, height: u32) -> Result<()> {
        self.db.execute(
            "UPDATE single_fee_sets SET confirmed_height = ?3 WHERE session_id = ?1 AND set_index = ?2",
            params![session_id, index as i64, height as i64],
        )?;
        Ok(())
    }

    /// Sets still open (held, not broadcast), oldest first.
    pub fn open_sets(&self) -> Result<Vec<StoredSet>> {
        self.sets_where("status = 'open' ORDER BY opened_at_unix_ms", &[])
    }

    /// Sets broadcast whose transaction has not been seen confirmed.
    pub fn unconfirmed_sets(&self) -> Result<Vec<(String, u32, Txid)>> {
        let mut statement = self.db.prepare(
            "SELECT session_id, set_index, txid FROM single_fee_sets
             WHERE status = 'broadcast' AND confirmed_height IS NULL AND txid IS NOT NULL",
        )?;
        let rows = statement.query_map([], |r| {
            let txid: String = r.get(2)?;
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u32, txid))
        })?;
        rows.map(|row| {
            row.and_then(|(session, index, txid)| {
                let txid = txid.parse().map_err(|e: bitcoin::hex::HexToArrayError| {
                    rusqlite::Error::FromSqlConversionFailure(
                        2,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?;
                Ok((session, index, txid))
            })
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

    /// Mark a payment `broadcast` or `failed`.
    pub fn set_payment_status(
        &self,
        session_id: &str,
        payment_id: u64,
        status: &str,
    ) -> Result<()> {
        self.db.execute(
            "UPDATE payments SET status = ?3 WHERE session_id = ?1 AND payment_id = ?2",
            params![session_id, payment_id as i64, status],
        )?;
        Ok(())
    }

    /// A payment, if recorded.
    pub fn payment(&self, session_id: &str, payment_id: u64) -> Result<Option<StoredPayment>> {
        self.db
            .query_row(
                "SELECT session_id, payment_id, tx_hex, status, quota_mwh FROM payments
                 WHERE session_id = ?1 AND payment_id = ?2",
                params![session_id, payment_id as i64],
                payment_row,
            )
            .optional()
    }

    /// Payments persisted but not yet broadcast (after a crash), oldest first.
    pub fn unbroadcast_payments(&self) -> Result<Vec<StoredPayment>> {
        let mut statement = self.db.prepare(
            "SELECT session_id, payment_id, tx_hex, status, quota_mwh FROM payments
             WHERE status = 'accepted' ORDER BY accepted_at_unix_ms",
        )?;
        let rows = statement.query_map([], payment_row)?;
        rows.collect()
    }

    /// Append to the audit log.
    pub fn audit(
        &self,
        outlet_id: &str,
        session_id: Option<&str>,
        event: &str,
        detail: &str,
    ) -> Result<()> {
        self.db.execute(
            "INSERT INTO audit (at_unix_ms, outlet_id, session_id, event, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![unix_ms(), outlet_id, session_id, event, detail],
        )?;
        Ok(())
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
    })
}
