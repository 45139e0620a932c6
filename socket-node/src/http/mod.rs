//! The owner's HTTP server on `http_listen` (design.md "Operator surface"), with axum:
//!
//! - `/`: the dashboard ([`DASHBOARD_HTML`] and its script and style: no build step). The page
//!   holds no data; it asks the JSON API with the token its owner gives it.
//! - `/api/v1/...`: the JSON API the page uses ([`api`]), and `/metrics` for Prometheus
//!   ([`crate::metrics`]). Both want `authorization: Bearer <token>` (a token of
//!   [`crate::tokens`]): none or a wrong one is `401`; acting (revoking a device) with the
//!   read-only token is `403`.
//! - `/healthz`: `ok`, without a token, for a load balancer or systemd's watchdog script.
//!
//! [`live`] takes every outlet's view once a second for the event stream and keeps an hour of
//! history for the plot.

pub mod api;
pub mod live;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::station::Station;
use crate::tokens::{Scope, Tokens};

/// The dashboard page.
pub const DASHBOARD_HTML: &str = include_str!("assets/dashboard.html");
/// Its script (plain JavaScript, no build step).
pub const DASHBOARD_JS: &str = include_str!("assets/dashboard.js");
/// Its style.
pub const DASHBOARD_CSS: &str = include_str!("assets/dashboard.css");

/// What every handler sees.
#[derive(Clone)]
pub struct Http {
    /// The running socket.
    pub station: Arc<Station>,
    /// The operator tokens.
    pub tokens: Tokens,
    /// Live views and history.
    pub live: Arc<live::Live>,
    /// Becomes `true` when the server stops: event streams end then.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Block heights of payments seen confirmed, so that the page's refresh asks bitcoind only
    /// about the unconfirmed ones (a reorg shows after a restart of the socket).
    pub confirmed: Arc<std::sync::Mutex<std::collections::HashMap<bitcoin::Txid, u32>>>,
}

/// An error of the HTTP API: a status and a message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// A `500` from any error of ours.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The router of the owner's HTTP server.
pub fn router(http: Http) -> Router {
    let protected = Router::new()
        .route("/metrics", get(api::metrics))
        .route("/api/v1/whoami", get(api::whoami))
        .route("/api/v1/outlets", get(api::outlets))
        .route("/api/v1/events", get(api::events))
        .route("/api/v1/history", get(api::history))
        .route("/api/v1/sessions", get(api::sessions))
        .route("/api/v1/payments", get(api::payments))
        .route("/api/v1/channels", get(api::channels))
        .route("/api/v1/devices", get(api::devices))
        .route("/api/v1/devices/{key}/revoke", post(api::revoke))
        .route("/api/v1/anomalies", get(api::anomalies))
        .route("/api/v1/audit", get(api::audit))
        .route("/api/v1/anchors", get(api::anchors))
        .layer(axum::middleware::from_fn_with_state(
            http.clone(),
            authenticate,
        ));
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", DASHBOARD_HTML) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .merge(protected)
        .with_state(http)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The token check of every protected route: the scope goes into the request's extensions.
async fn authenticate(
    State(http): State<Http>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let scope = http
        .tokens
        .scope_of_header(header)
        .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, e.to_string()))?;
    request.extensions_mut().insert(scope);
    Ok(next.run(request).await)
}

/// `403` unless the call carries the admin token.
pub fn require_admin(scope: Scope) -> Result<(), ApiError> {
    match scope {
        Scope::Admin => Ok(()),
        Scope::ReadOnly => Err(ApiError(
            StatusCode::FORBIDDEN,
            "this needs the admin token; the read-only token only reads".into(),
        )),
    }
}

/// Serve the owner's HTTP server on `listener` until `stop` becomes `true` (open event
/// streams end then); the live views run meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    station: Arc<Station>,
    tokens: Tokens,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let live = live::Live::new();
    let watcher = tokio::spawn(Arc::clone(&live).run(Arc::clone(&station)));
    let http = Http {
        station,
        tokens,
        live,
        stop: stop.clone(),
        confirmed: Arc::default(),
    };
    let served = axum::serve(listener, router(http))
        .with_graceful_shutdown(stopped(stop))
        .await;
    watcher.abort();
    served
}

/// Resolves once `stop` is `true` (or its sender is gone).
pub async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
