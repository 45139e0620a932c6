//! The socket's lifecycle (design.md "Architecture v3"), as ldk-node does it: [`Node::start`]
//! wires the store, the chain, Lightning, the outlets and their jobs (the [`Station`]), then the
//! three servers: `t2t.v1.Socket` for cables on `listen`, `t2t.v1.Operator` on
//! `operator_listen`, the dashboard, `/api/v1` and `/metrics` on `http_listen`.
//! [`Node::stop`] opens every relay, stops the servers and waits for each to end. `main.rs`
//! (`socket-node run`) and the tests start the same `Node`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use proto::v1::operator_server::OperatorServer;
use proto::v1::socket_server::SocketServer;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::config::SocketConfig;
use crate::operator::OperatorService;
use crate::service::SocketService;
use crate::station::Station;
use crate::tokens::Tokens;

/// A running socket: its outlets, jobs and servers.
pub struct Node {
    station: Arc<Station>,
    /// Where the cable-facing server listens (`listen`; the port the system chose for port 0).
    pub cable_address: SocketAddr,
    /// Where the operator's gRPC server listens (`operator_listen`).
    pub operator_address: SocketAddr,
    /// Where the dashboard, `/api/v1` and `/metrics` are served (`http_listen`).
    pub http_address: SocketAddr,
    health: tonic_health::server::HealthReporter,
    stop: tokio::sync::watch::Sender<bool>,
    servers: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Start the socket of `config` on `data_dir` (created 0700 when missing): its operator
    /// tokens (made on the first start), the station (store, wallet, bitcoind, Lightning,
    /// outlets and jobs) and the three servers. Returns once every server listens and every
    /// outlet runs. Errors: a config the station refuses, an unreachable bitcoind, an address
    /// already in use, an unwritable data dir.
    pub async fn start(config: SocketConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let (address, operator_address, http_address) =
            (config.listen, config.operator_listen, config.http_listen);
        wallet::keys::private_data_dir(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let tokens = Tokens::load_or_create(data_dir).context("the operator tokens")?;
        let data_dir = data_dir.to_owned();
        let station =
            tokio::task::spawn_blocking(move || Station::start(config, &data_dir)).await??;
        let bind = |address: SocketAddr, what: &'static str| async move {
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} ({what})"))
        };
        let bound = async {
            anyhow::Ok((
                bind(address, "listen").await?,
                bind(operator_address, "operator_listen").await?,
                bind(http_address, "http_listen").await?,
            ))
        };
        let (listener, operator_listener, http_listener) = match bound.await {
            Ok(listeners) => listeners,
            Err(e) => {
                // Nothing serves: the outlets, jobs and Lightning node stop before the error.
                station.stop().await;
                return Err(e);
            }
        };
        let (cable_address, operator_address, http_address) = (
            listener.local_addr()?,
            operator_listener.local_addr()?,
            http_listener.local_addr()?,
        );
        tracing::info!(address = %cable_address, operator = %operator_address, "serving t2t.v1.Socket and t2t.v1.Operator");
        tracing::info!(dashboard = %format!("http://{http_address}/"), "serving the dashboard, /api/v1 and /metrics");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = crate::http::stopped;
        // grpc.health.v1 and reflection on both servers, so that a probe or grpcurl needs no
        // .proto and no token.
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<SocketServer<SocketService>>().await;
        health
            .set_serving::<OperatorServer<OperatorService>>()
            .await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
        };
        let http_tokens = tokens.clone();
        let operator_service = OperatorServer::new(OperatorService(Arc::clone(&station)));
        let operator = tonic::transport::Server::builder()
            .add_service(health_service.clone())
            .add_service(reflection()?)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                operator_service,
                move |mut request: tonic::Request<()>| {
                    let scope = tokens.scope_of(request.metadata())?;
                    request.extensions_mut().insert(scope);
                    Ok(request)
                },
            ))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(operator_listener).with_nodelay(Some(true)),
                stopped(stop_rx.clone()),
            );
        // The cable-facing server, with its limits (crate::limits): streams per connection,
        // message size, call time, keepalive, connections, and request rates (the
        // interceptor, before a request is decoded further).
        let limits = station.shared.config.limits.clone();
        let peer_check = Arc::clone(&station);
        let socket_service = SocketServer::new(SocketService(Arc::clone(&station)))
            .max_decoding_message_size(limits.max_message_bytes);
        let keepalive = std::time::Duration::from_secs(limits.keepalive_secs);
        let cables = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(limits.max_streams_per_connection))
            .timeout(std::time::Duration::from_secs(limits.request_timeout_secs))
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive))
            .layer(tower::util::MapResponseLayer::new(
                crate::error::undecodable_is_invalid::<tonic::body::Body>,
            ))
            .add_service(health_service)
            .add_service(reflection()?)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                socket_service,
                move |request: tonic::Request<()>| {
                    peer_check.check_peer(request.remote_addr())?;
                    Ok(request)
                },
            ))
            .serve_with_incoming_shutdown(
                crate::limits::limit_connections(
                    // No Nagle: a request or reply waiting for the peer's delayed ACK costs
                    // ~40 ms.
                    TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        .with_keepalive(Some(keepalive)),
                    limits.max_connections,
                    limits.max_connections_per_host,
                ),
                stopped(stop_rx.clone()),
            );
        let http = crate::http::serve(http_listener, Arc::clone(&station), http_tokens, stop_rx);
        let servers = tokio::spawn(async move {
            tokio::try_join!(
                async { cables.await.context("the cable-facing gRPC server") },
                async { operator.await.context("the operator gRPC server") },
                async { http.await.context("the dashboard's HTTP server") }
            )
            .map(|_| ())
        });
        Ok(Node {
            station,
            cable_address,
            operator_address,
            http_address,
            health,
            stop,
            servers,
        })
    }

    /// The station: outlets, shared state and jobs (for the operator's and tests' reads).
    pub fn station(&self) -> &Arc<Station> {
        &self.station
    }

    /// The socket's identity key, 33-byte compressed (`Offer.socket_identity_key`).
    pub fn identity_key(&self) -> [u8; 33] {
        self.station.shared.identity_key
    }

    /// Stop: the cable-facing server says NOT_SERVING, every server stops taking requests,
    /// every relay opens and the outlets' sessions are saved (`Station::stop`); returns once
    /// every server has ended. Errors: a server that failed while it ran.
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("stopping: opening every relay");
        self.health
            .set_not_serving::<SocketServer<SocketService>>()
            .await;
        let _ = self.stop.send(true);
        self.station.stop().await;
        self.servers.await?
    }
}
