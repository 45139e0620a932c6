//! The socket's SQLite store, `<data dir>/socket.sqlite` (design.md, "Storage").
//!
//! A session's credited energy is never stored as a counter: it is the sum of the quotas of its
//! payments that did not fail, and a payment's key is `(session_id, payment_id)`. A replayed or
//! resent payment therefore cannot be credited twice, also across crashes. Every row that grants
//! energy is committed before the reply that grants it.

//!
//! One module per concern: [`sessions`], [`cables`] (what the socket knows of each cable
//! identity), [`payments`] (terms and on-chain payments),
//! [`single_fee`], [`spillman`], [`lightning`], [`audit`] (a hash chain), [`anomalies`], [`profiles`] (what each device is
//! expected to do), [`receipts`] (the cables'
//! metering receipts), and [`report`]: what the owner
//! reads (dashboard, metrics). The schema is versioned
//! ([`MIGRATIONS`], SQLite's `user_version`): a data dir of an older version is upgraded in
//! place when the store opens, and a newer one is refused.

mod anomalies;
pub mod audit;
mod cables;
mod devices;
mod lightning;
mod payments;
mod payouts;
mod profiles;
mod receipts;
mod report;
mod sessions;
mod single_fee;
mod spillman;
mod status;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::{Amount, Transaction};
use proto::units::EnergyMwh;
use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

use wallet::persist::persist;

pub use anomalies::AnomalyRow;
pub use audit::{AuditAnchor, AuditBreak};
pub use cables::{Blame, Lost};
pub use devices::{DevicePage, DeviceRow, DeviceStatus, RegistryRow};
pub use payouts::Payout;
pub use profiles::SessionProfile;
pub use receipts::ReceiptTaken;
pub use report::{AuditRow, OutletTotals, PaymentRow, SessionRow};
pub use single_fee::StoredSet;
pub use spillman::StoredChannel;
pub use status::{ChannelStatus, PaymentStatus, SetStatus};

/// The schema, one migration per version, oldest first; append, never edit. Version 1 is the
/// schema of the one-outlet socket (its `IF NOT EXISTS` lets a data dir made before versions
/// existed take it as is).
pub const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
    SCHEMA_V9, SCHEMA_V10, SCHEMA_V11, SCHEMA_V12,
];

const SCHEMA_V1: &str = "
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

/// Version 2: a fresh payout address per session (BIP84 receive index), bound to the session
/// that paid to it.
const SCHEMA_V2: &str = "
ALTER TABLE sessions ADD COLUMN payout_script_hex TEXT NOT NULL DEFAULT '';
CREATE TABLE payout_addresses (
    payout_index INTEGER PRIMARY KEY,
    outlet_id TEXT NOT NULL,
    script_hex TEXT NOT NULL,
    -- The session bound to it at its opening; NULL while the outlet offers it.
    session_id TEXT UNIQUE REFERENCES sessions(id)
);
";

/// Version 3: each session bound to the cable identity key that opened it, with the sequence
/// number of the last request accepted from it (design.md "Trust"). Sessions of version 2 have
/// no key: no further request of theirs is accepted.
const SCHEMA_V3: &str = "
ALTER TABLE sessions ADD COLUMN cable_key_hex TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN last_sequence INTEGER NOT NULL DEFAULT 0;
";

/// Version 4: the chain watch of credited on-chain payments (design.md "Trust"): a broadcast
/// payment becomes `confirmed` once `final_confirmations` deep, or `lost` when a conflicting
/// transaction spent one of its inputs (the cable replaced it). SQLite cannot change a CHECK
/// constraint in place: the table is rebuilt.
const SCHEMA_V4: &str = "
CREATE TABLE payments_v4 (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    payment_id INTEGER NOT NULL,
    txid TEXT NOT NULL,
    tx_hex TEXT NOT NULL,
    amount_sat INTEGER NOT NULL,
    quota_mwh INTEGER NOT NULL,
    fee_sat INTEGER NOT NULL,
    vsize INTEGER NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('accepted', 'broadcast', 'failed', 'held', 'confirmed', 'lost')),
    accepted_at_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, payment_id),
    FOREIGN KEY (session_id, payment_id) REFERENCES terms(session_id, payment_id)
);
INSERT INTO payments_v4 SELECT * FROM payments;
DROP TABLE payments;
ALTER TABLE payments_v4 RENAME TO payments;
";

/// Version 5: what the socket knows of each cable identity (design.md "Trust"): the sequence
/// of the last request that opened a session (a replayed opening request is refused), what it
/// took from the socket (payments lost), and a ban after a loss (`banned_until_unix_ms` NULL
/// with a reason: for good).
const SCHEMA_V5: &str = "
CREATE TABLE cables (
    key_hex TEXT PRIMARY KEY,
    first_seen_unix_ms INTEGER NOT NULL,
    last_opening_sequence INTEGER NOT NULL DEFAULT 0,
    lost_sat INTEGER NOT NULL DEFAULT 0,
    banned_reason TEXT,
    banned_at_unix_ms INTEGER,
    banned_until_unix_ms INTEGER
);
";

/// Version 6: a spillman close is kept (the exact transaction) and watched until it confirms,
/// sent again with its deposit while it does not; each cable's refused requests are counted
/// (design.md "Trust").
const SCHEMA_V6: &str = "
ALTER TABLE spillman_channels ADD COLUMN close_tx_hex TEXT;
ALTER TABLE spillman_channels ADD COLUMN close_confirmed_height INTEGER;
ALTER TABLE cables ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
-- The exposure to one cable (max_unconfirmed_sat) is summed at every onchain payment.
CREATE INDEX sessions_by_cable ON sessions(cable_key_hex);
";

/// Version 7: the audit log as a hash chain (design.md "Attestation"; [`audit`]): each row's
/// place `seq` and hash; rows of older versions are chained when the store opens. The anchors
/// of the chain's head on Bitcoin.
const SCHEMA_V7: &str = "
ALTER TABLE audit ADD COLUMN seq INTEGER;
ALTER TABLE audit ADD COLUMN hash_hex TEXT;
CREATE UNIQUE INDEX audit_by_seq ON audit(seq);
CREATE TABLE audit_anchors (
    seq INTEGER PRIMARY KEY,
    head_hash_hex TEXT NOT NULL,
    txid TEXT NOT NULL,
    at_unix_ms INTEGER NOT NULL,
    fee_sat INTEGER NOT NULL,
    vsize INTEGER NOT NULL
);
";

/// Version 8: anomalies (design.md "Attestation"): what a rule found, with its evidence and
/// the action taken; a cable identity may be flagged.
const SCHEMA_V8: &str = "
CREATE TABLE anomalies (
    id INTEGER PRIMARY KEY,
    at_unix_ms INTEGER NOT NULL,
    outlet_id TEXT NOT NULL,
    session_id TEXT,
    cable_key_hex TEXT NOT NULL DEFAULT '',
    rule TEXT NOT NULL,
    action TEXT NOT NULL,
    evidence TEXT NOT NULL
);
ALTER TABLE cables ADD COLUMN flagged_reason TEXT;
ALTER TABLE cables ADD COLUMN flagged_at_unix_ms INTEGER;
ALTER TABLE cables ADD COLUMN anomalies INTEGER NOT NULL DEFAULT 0;
";

/// Version 9: metering receipts (socket.proto `MeteringReceipt`; design.md "Attestation"), as
/// the cable signed them, one per status sequence of a session.
const SCHEMA_V9: &str = "
CREATE TABLE receipts (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    socket_sequence INTEGER NOT NULL,
    socket_energy_mwh INTEGER NOT NULL,
    cable_metered INTEGER NOT NULL,
    cable_energy_mwh INTEGER NOT NULL,
    -- MeteringReceipt.body and .signature, the exact bytes received.
    body BLOB NOT NULL,
    signature BLOB NOT NULL,
    received_at_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, socket_sequence)
);
";

/// Version 10: device profiles (design.md "Attestation"; operator.proto `DeviceProfile`), as
/// an operator's registry or the owner declared them.
const SCHEMA_V10: &str = "
ALTER TABLE cables ADD COLUMN profile_max_power_w INTEGER;
ALTER TABLE cables ADD COLUMN profile_max_energy_per_session_wh INTEGER;
-- When the profile was declared (a registry's issued_at, or the owner's clock), Unix seconds:
-- an older registry played back does not replace a newer profile.
ALTER TABLE cables ADD COLUMN profile_declared_at_unix_secs INTEGER;
";

/// Version 11: whether a spillman channel's deposit was seen confirmed (at a payment): until
/// then what the channel credited counts in the cable's `max_unconfirmed_sat`, as a double
/// spend of the deposit would take it back (design.md "Trust").
const SCHEMA_V11: &str = "
ALTER TABLE spillman_channels ADD COLUMN deposit_confirmed INTEGER NOT NULL DEFAULT 0;
";

/// Version 12: the unconfirmed parents of each transaction the socket credits (a payment, a
/// single-fee set's transaction, a spillman deposit), kept once each and linked to it: should
/// it go missing from the mempool, the chain watch sends an evicted parent again, or finds the
/// parent replaced by a named transaction and records the loss, not proven the cable's
/// (design.md "Blame needs proof"), in `unproven_lost_sat`.
const SCHEMA_V12: &str = "
CREATE TABLE parent_txs (
    txid TEXT PRIMARY KEY,
    tx_hex TEXT NOT NULL
);
CREATE TABLE tx_parents (
    child_txid TEXT NOT NULL,
    parent_txid TEXT NOT NULL REFERENCES parent_txs(txid),
    PRIMARY KEY (child_txid, parent_txid)
);
ALTER TABLE cables ADD COLUMN unproven_lost_sat INTEGER NOT NULL DEFAULT 0;
";

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
}

/// What the chain check of a transaction the socket is about to credit found
/// (`seller::check_on_chain`), persisted with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedTx {
    /// Its fee.
    pub fee: Amount,
    /// Its virtual size, vB.
    pub vsize: u64,
    /// The transactions it spends from that were unconfirmed (in the mempool) at the check.
    pub parents: Vec<Transaction>,
}

/// Who signed a request, as checked by `proto::request_auth::verify_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CableAuth {
    /// The cable's identity key.
    pub key: bitcoin::secp256k1::PublicKey,
    /// The request's sequence number.
    pub sequence: u64,
}

/// Whether a cable may open a session ([`Store::admit_cable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Yes: its sequence is now the last opening one.
    Yes,
    /// The opening request's sequence is not above the cable's last one: a replay.
    Replay {
        /// The last opening sequence accepted.
        last_sequence: u64,
    },
    /// The cable's identity is banned (it made the socket lose a payment).
    Banned {
        /// Why.
        reason: String,
        /// Until when (Unix ms); `None`: for good.
        until_unix_ms: Option<i64>,
    },
}

/// Whether a signed request may act on its session ([`Store::authorize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorized {
    /// Yes: the session's cable, a new sequence (now the last accepted).
    Yes,
    /// No such session.
    NoSession,
    /// The session is bound to another cable's key.
    OtherCable,
    /// The sequence is not above the last accepted one.
    Replay {
        /// The last sequence accepted.
        last_sequence: u64,
    },
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

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPayment {
    /// Session id.
    pub session_id: String,
    /// Payment id within the session.
    pub payment_id: u64,
    /// The transaction.
    pub tx: Transaction,
    /// Accepted (persisted, not yet broadcast), broadcast, failed or held.
    pub status: PaymentStatus,
    /// Energy credited for it.
    pub quota: EnergyMwh,
    /// What it pays the socket (single-fee: the increment of its terms).
    pub amount: Amount,
}

/// The store.
pub struct Store {
    db: Connection,
}

/// What a store call returns: SQLite's errors as they are.
pub type Result<T> = std::result::Result<T, rusqlite::Error>;

/// Errors of the store: SQLite's, or a schema migration that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused a statement.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be brought to the current version (e.g. the data dir was written
    /// by a newer socket-node).
    #[error("store schema: {0}")]
    Migration(#[from] rusqlite_migration::Error),
}

impl Store {
    /// Open (and create, or upgrade to the current schema version) the store of `data_dir`.
    pub fn open(data_dir: &Path) -> std::result::Result<Self, StoreError> {
        let mut db = Connection::open(data_dir.join("socket.sqlite"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect()).to_latest(&mut db)?;
        audit::chain_old_rows(&mut db)?;
        Ok(Store { db })
    }

    /// The schema version of the open store.
    pub fn schema_version(&self) -> Result<usize> {
        self.db
            .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .map(|v| v as usize)
    }
}

#[cfg(test)]
mod tests;
