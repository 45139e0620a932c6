//! The JSON API under the dashboard, `/api/v1/...` (every route wants a token, see
//! [`super`]). Amounts are msat or sat, energy mWh, power mW, times Unix ms, as the field
//! names say.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v1/whoami` | `{"scope": "admin" \| "read-only"}` |
//! | `GET /api/v1/outlets` | `{"outlets": [OutletView], "totals": [OutletTotals]}` |
//! | `GET /api/v1/events` | server-sent events: `outlets`, data = `[OutletView]`, once a second |
//! | `GET /api/v1/history` | `{outlet_id: [Sample]}`: the last hour, a sample each 10 s |
//! | `GET /api/v1/sessions?limit=N` | `[SessionRow]`, newest first (N ≤ 500, default 50) |
//! | `GET /api/v1/payments?limit=N` | `[PaymentRow + confirmations]`, newest first |
//! | `GET /api/v1/channels` | Lightning channels (`[]` without a Lightning node) |
//! | `GET /api/v1/devices` | `[DeviceRow]`: every cable identity seen |
//! | `GET /api/v1/anomalies?limit=N` | `[AnomalyRow]`: what the rules found, with evidence, newest first |
//! | `POST /api/v1/devices/{key}/revoke` | admin: body `{"reason": "..."}`; revokes the cable for good and halts its open sessions |
//! | `GET /api/v1/audit?limit=N` | `[AuditRow]`, newest first (each with its hash in the chain) |
//! | `GET /api/v1/anchors` | `[AuditAnchor]`: the chain's head anchored on Bitcoin, oldest first |
//! | `GET /metrics` | Prometheus text format |

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{require_admin, ApiError, Http};
use crate::store::{DevicePage, PaymentRow, Store};
use crate::tokens::Scope;

/// `?limit=N`.
#[derive(Debug, Deserialize)]
pub struct Limit {
    limit: Option<u32>,
}

impl Limit {
    fn rows(&self) -> u32 {
        self.limit.unwrap_or(50).clamp(1, 500)
    }
}

/// Run a read of the store off the async workers.
async fn read<T: Send + 'static>(
    http: &Http,
    f: impl FnOnce(&Store) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let station = std::sync::Arc::clone(&http.station);
    tokio::task::spawn_blocking(move || f(&station.shared.store()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// `GET /api/v1/whoami`: the scope of the token presented.
pub async fn whoami(Extension(scope): Extension<Scope>) -> Json<Value> {
    Json(json!({ "scope": match scope {
        Scope::Admin => "admin",
        Scope::ReadOnly => "read-only",
    }}))
}

/// `GET /api/v1/outlets`: every outlet now, and the totals of each outlet and scheme.
pub async fn outlets(State(http): State<Http>) -> Result<Json<Value>, ApiError> {
    let mut views = Vec::new();
    for outlet in http.station.outlets.iter() {
        views.push(
            outlet
                .view()
                .await
                .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?,
        );
    }
    let totals = read(&http, |store| store.outlet_totals()).await?;
    Ok(Json(json!({ "outlets": views, "totals": totals })))
}

/// `GET /api/v1/events`: the outlets' views as server-sent events (`event: outlets`), the
/// latest at once, then each second; ends when the socket stops.
pub async fn events(
    State(http): State<Http>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let views = tokio_stream::wrappers::WatchStream::new(http.live.subscribe());
    let stream = views
        .filter(|views| std::future::ready(!views.is_empty()))
        .map(|views| {
            Ok(Event::default()
                .event("outlets")
                .json_data(views)
                .unwrap_or_else(|_| Event::default().comment("unencodable")))
        })
        .take_until(super::stopped(http.stop.clone()));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /api/v1/history`: each outlet's power and session energy over the last hour.
pub async fn history(State(http): State<Http>) -> Json<Value> {
    Json(json!(http.live.history()))
}

/// `GET /api/v1/sessions`.
pub async fn sessions(
    State(http): State<Http>,
    Query(limit): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let rows = limit.rows();
    Ok(Json(json!(
        read(&http, move |store| store.recent_sessions(rows)).await?
    )))
}

/// A payment with its confirmations (on chain, as bitcoind says now, 0 in the mempool; `null`
/// for Lightning, or a payment held and not broadcast itself, e.g. a single-fee payment whose
/// set was broadcast).
#[derive(Debug, Serialize)]
struct PaymentWithConfirmations {
    #[serde(flatten)]
    payment: PaymentRow,
    confirmations: Option<u32>,
}

/// `GET /api/v1/payments`.
pub async fn payments(
    State(http): State<Http>,
    Query(limit): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let rows = limit.rows();
    let payments = read(&http, move |store| store.recent_payments(rows)).await?;
    let chain = std::sync::Arc::clone(&http.station.shared.chain);
    let confirmed = std::sync::Arc::clone(&http.confirmed);
    let with = tokio::task::spawn_blocking(move || {
        let tip = chain.height().ok();
        let height_of = |txid: bitcoin::Txid| -> Option<Option<u32>> {
            if let Some(height) = crate::shared::lock(&confirmed).get(&txid) {
                return Some(Some(*height));
            }
            let height = chain.confirmation_height(&txid).ok()?;
            if let Some(h) = height {
                crate::shared::lock(&confirmed).insert(txid, h);
            }
            Some(height)
        };
        payments
            .into_iter()
            .map(|payment| {
                let on_chain = payment.scheme != "lightning"
                    && matches!(
                        payment.status.as_str(),
                        "broadcast" | "confirmed" | "accepted"
                    );
                // On chain: 0 while in the mempool; unknown (None) when bitcoind does not say.
                let confirmations = on_chain
                    .then(|| payment.txid_or_payment_hash.parse().ok())
                    .flatten()
                    .and_then(height_of)
                    .zip(tip)
                    .map(|(height, tip)| height.map_or(0, |h| tip.saturating_sub(h) + 1));
                PaymentWithConfirmations {
                    payment,
                    confirmations,
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(json!(with)))
}

/// `GET /api/v1/channels`.
pub async fn channels(State(http): State<Http>) -> Result<Json<Value>, ApiError> {
    let Some(ln) = http.station.shared.ln.clone() else {
        return Ok(Json(json!([])));
    };
    let channels = tokio::task::spawn_blocking(move || ln.list_channels())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!(channels
        .iter()
        .map(|c| json!({
            "channel_id": c.channel_id.to_string(),
            "counterparty_node_id": c.counterparty_node_id.to_string(),
            "capacity_sat": c.channel_value_sats,
            "outbound_msat": c.outbound_capacity_msat,
            "inbound_msat": c.inbound_capacity_msat,
            "usable": c.is_usable,
            "funding_txid": c.funding_txo.map(|o| o.txid.to_string()),
        }))
        .collect::<Vec<_>>())))
}

/// `GET /api/v1/devices?limit=N`: the `N` (default 50, at most 500) most recently seen cable
/// identities, most recent first (the operator API's `ListDevices` lists them all, page by
/// page).
pub async fn devices(
    State(http): State<Http>,
    Query(limit): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit.rows();
    Ok(Json(json!(
        read(&http, move |store| store
            .devices(DevicePage::Recent { limit }))
        .await?
    )))
}

/// The body of a revoke.
#[derive(Debug, Deserialize)]
pub struct Revoke {
    /// Why, for the audit log and the cable's refusal.
    reason: String,
}

/// `POST /api/v1/devices/{key}/revoke` (admin): the cable identity `key` is refused every new
/// session with the reason, and its sessions in progress end in lockout.
/// Errors: `400` for a key that is not a compressed secp256k1 public key or an empty reason,
/// `403` for the read-only token.
pub async fn revoke(
    State(http): State<Http>,
    Extension(scope): Extension<Scope>,
    Path(key): Path<String>,
    Json(body): Json<Revoke>,
) -> Result<Json<Value>, ApiError> {
    require_admin(scope)?;
    let key: bitcoin::secp256k1::PublicKey = key
        .parse()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("not a cable key: {e}")))?;
    let halted = http
        .station
        .revoke_cable(&key, &body.reason)
        .await
        .map_err(|e| match e {
            crate::error::SocketError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            e => ApiError::internal(e),
        })?;
    Ok(Json(json!({
        "key_hex": key.to_string(),
        "status": "revoked",
        "sessions_halted": halted,
    })))
}

/// `GET /api/v1/audit`.
pub async fn audit(
    State(http): State<Http>,
    Query(limit): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let rows = limit.rows();
    Ok(Json(json!(
        read(&http, move |store| store.audit_tail(rows)).await?
    )))
}

/// `GET /api/v1/anomalies`: what the rules found, newest first.
pub async fn anomalies(
    State(http): State<Http>,
    Query(limit): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let rows = limit.rows();
    Ok(Json(json!(
        read(&http, move |store| store.anomalies(rows)).await?
    )))
}

/// `GET /api/v1/anchors`: the anchors of the audit log's head on Bitcoin, oldest first.
pub async fn anchors(State(http): State<Http>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        read(&http, |store| store.audit_anchors()).await?
    )))
}

/// `GET /metrics`: Prometheus text exposition ([`crate::metrics`]).
pub async fn metrics(State(http): State<Http>) -> Result<Response, ApiError> {
    let station = std::sync::Arc::clone(&http.station);
    let text = tokio::task::spawn_blocking(move || {
        // The store's lock only for its two reads, not while the Lightning node answers.
        let (totals, events) = {
            let store = station.shared.store();
            (store.outlet_totals()?, store.audit_counts()?)
        };
        crate::metrics::encode(&totals, &events, station.shared.ln.as_deref())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
