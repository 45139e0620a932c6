//! The store's schema: one SQL migration per version, oldest first.

/// The schema, one migration per version, oldest first; append, never edit (SQLite's
/// `user_version` holds the version: an older data dir is upgraded in place when the store
/// opens, a newer one is refused). Version 1 is the schema before versions existed; its
/// `IF NOT EXISTS` lets such a data dir take it as is.
pub const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4];

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
