//! What every bench shares: the price and quota, the socket's and the cables' settings, and a
//! cable run to its end with what its report says.

use std::time::{Duration, Instant};

use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use serde_json::Value;

/// Price and quota of every bench: 1 Wh quotas at 1 000 sat.
const PRICE_MSAT_PER_WH: u64 = 1_000_000;
const QUOTA_MWH: u64 = 1_000;
pub(crate) const QUOTA_SAT: u64 = 1_000;

/// The socket of the benches: every scheme, Lightning on, 1 Wh quotas, a constant load drawn
/// fast (time scale 10), QuotaLow at half a quota so the cable pays ahead.
pub(crate) fn socket_setup(outlets: usize, lightning: bool) -> SocketSetup {
    SocketSetup {
        price_msat_per_wh: PRICE_MSAT_PER_WH,
        quota_mwh: QUOTA_MWH,
        quota_low_mwh: QUOTA_MWH / 2,
        time_scale: 10.0,
        load_toml: "kind = \"constant\"\npower_w = 1800.0".into(),
        single_fee_max_sat: 1_000 * QUOTA_SAT,
        lightning,
        spillman: true,
        outlets,
        // Every cable of the bench connects from this one host (127.0.0.1): lift the per-host
        // limits a power-line link puts on one device.
        top_toml: "limits = { max_connections_per_host = 100000, \
                   max_watch_streams_per_host = 100000, peer_requests_per_sec = 100000, \
                   peer_burst = 100000 }"
            .into(),
        ..SocketSetup::default()
    }
}

/// A cable that stops after `payments` quotas (its budget is exactly that).
pub(crate) fn cable_setup(scheme: &str, outlet: &str, payments: u32) -> CableSetup {
    CableSetup {
        max_price_msat_per_wh: PRICE_MSAT_PER_WH,
        max_session_sat: QUOTA_SAT * payments as u64,
        unplug_when_idle_secs: 1.0,
        schemes: vec![scheme.into()],
        outlet_id: outlet.into(),
        lightning_channel_sat: Some(QUOTA_SAT * payments as u64 * 2 + 50_000),
        ..CableSetup::default()
    }
}

/// What a cable's report says: outcome, accepted payments and their latencies (ms).
pub(crate) struct CableOutcome {
    pub(crate) outcome: String,
    pub(crate) latencies_ms: Vec<f64>,
    pub(crate) plug_in_ms: Option<f64>,
}

/// What `report` (a cable's JSON report) says.
pub(crate) fn outcome_of(report: &Value) -> CableOutcome {
    let payments = report["payments"].as_array().cloned().unwrap_or_default();
    CableOutcome {
        outcome: report["outcome"].as_str().unwrap_or("no report").to_owned(),
        latencies_ms: payments
            .iter()
            .filter_map(|p| p["latency_ms"].as_f64())
            .collect(),
        plug_in_ms: report["plug_in_to_paid_ms"].as_f64(),
    }
}

/// Run `cable` to its end within `limit`; what its report says.
pub(crate) fn run_cable(cable: &CableFiles, limit: Duration) -> anyhow::Result<CableOutcome> {
    let out = cable.run(limit)?;
    let report: Value = std::fs::read_to_string(&cable.report)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    let outcome = outcome_of(&report);
    if !out.status.success() {
        eprintln!(
            "cable ended with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(outcome)
}

/// Wait until every outlet of `socket` has no session (the last unplug is debounced).
pub(crate) fn wait_idle(socket: &SocketProcess, outlet: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket
        .status_of(outlet)
        .map_or(true, |s| !s.session_hash.is_empty())
    {
        anyhow::ensure!(Instant::now() < deadline, "outlet {outlet} stayed busy");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
