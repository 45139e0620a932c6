//! Prometheus metrics of the socket (design.md "Operator surface"), served at `/metrics` on
//! `http_listen` in the text exposition format by `prometheus-client`.
//!
//! Two kinds:
//! - measured as they happen, process-wide ([`METRICS`]): refusals by reason code, the time the
//!   socket takes to check and credit an on-chain payment, bitcoind RPC latency and errors;
//! - read at each scrape from the store and the Lightning node ([`encode`]): energy sold and
//!   revenue by outlet and scheme, sessions, lockouts, lost payments, audit events, channel
//!   balances. What the store says is what is scraped.
//!
//! Units are in the names: `_wh`, `_sat`, `_msat`, `_seconds`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use proto::v1::ErrorReason;
use wallet::chain::RpcOutcome;

use crate::store::OutletTotals;

/// Labels: a scheme.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchemeLabel {
    scheme: String,
}

/// Labels: an error reason code of `socket.proto`'s `ErrorReason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Labels: a bitcoind RPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// Labels: a bitcoind RPC method and how it failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcErrorLabel {
    method: String,
    /// `refused`: bitcoind answered with an error; `failed`: no answer.
    kind: String,
}

/// Labels: an outlet and a scheme.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutletSchemeLabel {
    outlet: String,
    scheme: String,
}

/// Labels: an outlet and an audit event code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutletEventLabel {
    outlet: String,
    event: String,
}

/// Labels: a Lightning channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel_id: String,
    counterparty_node_id: String,
}

/// What is measured as it happens, process-wide.
pub struct Metrics {
    registry: Registry,
    refusals: Family<ReasonLabel, Counter>,
    payment_check: Family<SchemeLabel, Histogram>,
    rpc_latency: Family<MethodLabel, Histogram>,
    rpc_errors: Family<RpcErrorLabel, Counter>,
}

/// Buckets from 1 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The socket's live metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("t2t");
    let refusals = Family::<ReasonLabel, Counter>::default();
    registry.register(
        "refusals",
        "Requests of cables refused, by reason code (socket.proto ErrorReason)",
        refusals.clone(),
    );
    let payment_check =
        Family::<SchemeLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
    registry.register(
        "payment_check_seconds",
        "Time from a PayTransaction's arrival to its payment credited (onchain, single-fee, spillman)",
        payment_check.clone(),
    );
    let rpc_latency =
        Family::<MethodLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
    registry.register(
        "bitcoind_rpc_seconds",
        "Latency of bitcoind RPC calls, by method",
        rpc_latency.clone(),
    );
    let rpc_errors = Family::<RpcErrorLabel, Counter>::default();
    registry.register(
        "bitcoind_rpc_errors",
        "bitcoind RPC calls that failed, by method and kind (refused: bitcoind answered with an \
         error, e.g. an unknown txid; failed: no answer)",
        rpc_errors.clone(),
    );
    Metrics {
        registry,
        refusals,
        payment_check,
        rpc_latency,
        rpc_errors,
    }
});

impl Metrics {
    /// Count a request refused with `reason`.
    pub fn refused(&self, reason: ErrorReason) {
        let reason = reason.as_str_name().trim_start_matches("ERROR_REASON_");
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.to_ascii_lowercase(),
            })
            .inc();
    }

    /// Record how long a payment of `scheme` took from its arrival to its credit.
    pub fn payment_credited(&self, scheme: proto::Scheme, took: Duration) {
        self.payment_check
            .get_or_create(&SchemeLabel {
                scheme: scheme.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Record one bitcoind RPC call ([`wallet::chain::Chain::observe`]).
    pub fn rpc(&self, method: &str, took: Duration, outcome: RpcOutcome) {
        self.rpc_latency
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
        let kind = match outcome {
            RpcOutcome::Ok => return,
            RpcOutcome::Refused => "refused",
            RpcOutcome::Failed => "failed",
        };
        self.rpc_errors
            .get_or_create(&RpcErrorLabel {
                method: method.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }
}

/// The whole exposition: the live metrics, then what the store said (`totals` by outlet and
/// scheme, audit `events` by outlet and event) and what the Lightning node `ln` says now.
/// Blocking (ldk-node): call off the async workers. Errors: the text encoder's.
pub fn encode(
    totals: &[OutletTotals],
    events: &[(String, String, u64)],
    ln: Option<&ln::ldk_node::Node>,
) -> anyhow::Result<String> {
    let mut now = Registry::with_prefix("t2t");
    let energy = Family::<OutletSchemeLabel, Counter<f64>>::default();
    let revenue = Family::<OutletSchemeLabel, Counter<f64>>::default();
    let sessions = Family::<OutletSchemeLabel, Counter>::default();
    let lockouts = Family::<OutletSchemeLabel, Counter>::default();
    let payments = Family::<OutletSchemeLabel, Counter>::default();
    let lost = Family::<OutletSchemeLabel, Counter>::default();
    for t in totals {
        let label = OutletSchemeLabel {
            outlet: t.outlet_id.clone(),
            scheme: t.scheme.clone(),
        };
        energy
            .get_or_create(&label)
            .inc_by(t.energy_used_mwh as f64 / 1_000.0);
        revenue
            .get_or_create(&label)
            .inc_by(t.revenue_msat as f64 / 1_000.0);
        sessions.get_or_create(&label).inc_by(t.sessions);
        lockouts.get_or_create(&label).inc_by(t.lockouts);
        payments.get_or_create(&label).inc_by(t.payments);
        lost.get_or_create(&label).inc_by(t.payments_lost);
    }
    now.register(
        "energy_sold_wh",
        "Energy the sessions used (the socket's meter), Wh",
        energy,
    );
    now.register(
        "revenue_sat",
        "Payments credited (on chain: not failed or lost; Lightning: received), sat",
        revenue,
    );
    now.register("sessions", "Sessions opened", sessions);
    now.register("lockouts", "Sessions ended by a lockout", lockouts);
    now.register("payments", "Payments credited", payments);
    now.register(
        "payments_lost",
        "On-chain payments credited, then lost (replaced or double-spent)",
        lost,
    );
    let audit = Family::<OutletEventLabel, Counter>::default();
    for (outlet, event, count) in events {
        audit
            .get_or_create(&OutletEventLabel {
                outlet: outlet.clone(),
                event: event.clone(),
            })
            .inc_by(*count);
    }
    now.register(
        "events",
        "Rows of the audit log by outlet and event (payment-refused, payment-lost, revoked, ...)",
        audit,
    );
    if let Some(ln) = ln {
        let outbound = Family::<ChannelLabel, Gauge>::default();
        let inbound = Family::<ChannelLabel, Gauge>::default();
        for channel in ln.list_channels() {
            let label = ChannelLabel {
                channel_id: channel.channel_id.to_string(),
                counterparty_node_id: channel.counterparty_node_id.to_string(),
            };
            outbound
                .get_or_create(&label)
                .set(channel.outbound_capacity_msat as i64);
            inbound
                .get_or_create(&label)
                .set(channel.inbound_capacity_msat as i64);
        }
        now.register(
            "lightning_outbound_msat",
            "What the socket can send on each Lightning channel, msat",
            outbound,
        );
        now.register(
            "lightning_inbound_msat",
            "What the socket can receive on each Lightning channel, msat",
            inbound,
        );
        let onchain = Gauge::<i64>::default();
        onchain.set(ln.list_balances().spendable_onchain_balance_sats as i64);
        now.register(
            "lightning_onchain_spendable_sat",
            "The Lightning node's spendable on-chain balance, sat",
            onchain,
        );
    }
    let mut text = String::new();
    encode_registry(&mut text, &METRICS.registry)?;
    encode_registry(&mut text, &now)?;
    encode_eof(&mut text)?;
    Ok(text)
}
