//! What a session is and what it did: the cable's running record of one session ([`Session`])
//! and the report it ends with ([`SessionReport`], the demo's `--report FILE`).

use std::time::{Duration, Instant};

use bitcoin::Amount;
use proto::receipt::MeterCheck;
use serde::{Deserialize, Serialize};

use super::metering::Latest;

/// What a session did, for people and for the demo (`--report FILE`, JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionReport {
    /// The socket's session id.
    pub session_id: String,
    /// How it ended.
    pub outcome: String,
    /// Each payment the socket accepted.
    pub payments: Vec<PaymentReport>,
    /// The transactions that went on chain: each payment for `onchain`, one per input set
    /// for `single-fee` (its highest value, with the fee paid once).
    pub onchain_txs: Vec<PaymentReport>,
    /// Real time from plug-in to the appliance relay closing.
    pub plug_in_to_paid_ms: Option<u64>,
    /// Energy the socket metered in the session.
    pub energy_used_mwh: u64,
}

/// One accepted payment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentReport {
    /// Payment id within the session.
    pub payment_id: u64,
    /// Transaction id.
    pub txid: String,
    /// Paid to the socket.
    pub amount_sat: u64,
    /// Paid to miners.
    pub fee_sat: u64,
    /// Virtual size.
    pub vsize: u64,
    /// Time from the cable's request of the quota (`PowerRequest`, or the keysend) to the
    /// socket's credit (its `PayTransaction` reply, or the Lightning payment's success).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
}

/// The cable's running record of one session.
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) paid: Amount,
    pub(crate) payments: Vec<PaymentReport>,
    pub(crate) plug_in_to_paid: Option<Duration>,
    pub(crate) drew_power: bool,
    pub(crate) idle_since: Option<Instant>,
    pub(crate) energy_used_mwh: u64,
    /// Whether a status has shown this session (older statuses may predate it).
    pub(crate) seen_in_status: bool,
    /// The sequence of the newest signed status seen: older ones are stale.
    pub(crate) last_status_sequence: u64,
    /// Transactions that went on chain for the session.
    pub(crate) onchain_txs: Vec<PaymentReport>,
    /// Whether the session was resumed from the store after a restart.
    pub(crate) resumed: bool,
    /// A resumed session: the payout script of the offer it opened with, which its terms pay
    /// (the socket's offer has the next session's address by now).
    pub(crate) payout_script: Option<Vec<u8>>,
    /// The socket's count against the cable's meter (socket.proto "Meter agreement").
    pub(crate) meter: MeterCheck,
    /// The cable's meter when the session started.
    pub(crate) meter_base_mwh: u64,
    /// QuotaLows received while more than a quota was paid and unused.
    pub(crate) unfounded_quota_lows: u32,
    /// What the next receipt countersigns.
    pub(crate) latest: Option<Latest>,
}

impl Session {
    /// A session not opened yet (no id, nothing paid).
    pub(crate) fn new() -> Self {
        Session {
            id: String::new(),
            paid: Amount::ZERO,
            payments: Vec::new(),
            plug_in_to_paid: None,
            drew_power: false,
            idle_since: None,
            energy_used_mwh: 0,
            seen_in_status: false,
            last_status_sequence: 0,
            onchain_txs: Vec::new(),
            resumed: false,
            payout_script: None,
            meter: MeterCheck::default(),
            meter_base_mwh: 0,
            unfounded_quota_lows: 0,
            latest: None,
        }
    }
}
