//! `socket-node`: the smart socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bitcoin::hex::DisplayHex;
use clap::{Parser, Subcommand};
use proto::registry::{EntryStatus, Profile};
use proto::v1::operator_client::OperatorClient;
use proto::v1::operator_server::OperatorServer;
use proto::v1::socket_client::SocketClient;
use proto::v1::socket_server::SocketServer;
use proto::v1::{CloseChannelRequest, ListChannelsRequest};
use proto::v1::{GetStatusRequest, OutletState};
use socket_node::config::SocketConfig;
use socket_node::operator::OperatorService;
use socket_node::service::SocketService;
use socket_node::station::Station;
use socket_node::tokens::{self, Scope, Tokens};
use tonic::transport::server::TcpIncoming;

/// A smart socket that sells electricity for bitcoin: it offers a price per Wh, takes a
/// payment per quota over gRPC, closes its relay while paid, and locks out cheaters.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the socket: serve gRPC on `listen`, drive every outlet, take payments. SIGINT or
    /// SIGTERM opens every relay and stops. Both gRPC servers also serve `grpc.health.v1` and
    /// reflection; the operator API wants a token from the data dir (`admin.token`,
    /// `readonly.token`, created at first start).
    Run {
        /// TOML config (see docs/operating.md for an example).
        #[arg(long)]
        config: PathBuf,
        /// Folder of the seed, wallet and store; created on first start.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to serve gRPC on, overriding the config's `listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
    },
    /// List the Lightning channels of a running socket: peer, capacity, what it can send and
    /// receive, state.
    Channels {
        /// gRPC endpoint of the socket's operator API (`operator_listen`).
        #[arg(long, default_value = OPERATOR)]
        operator: String,
        /// The socket's data dir, where its read-only token is (`readonly.token`).
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
    },
    /// Close a running socket's Lightning channels: cooperatively (the cable must be online),
    /// or with --force when it is gone (the socket's funds return after the to_self_delay).
    CloseChannel {
        /// gRPC endpoint of the socket's operator API (`operator_listen`).
        #[arg(long, default_value = OPERATOR)]
        operator: String,
        /// The socket's data dir, where its admin token is (`admin.token`).
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
        /// The channel to close (hex id from `channels`); all of them when absent.
        #[arg(long)]
        channel_id: Option<String>,
        /// Broadcast our latest commitment instead of negotiating a close.
        #[arg(long)]
        force: bool,
    },
    /// List the cable identities a running socket has seen (its devices): status (allowed,
    /// flagged, banned, revoked) and why, sessions, energy, revenue, refusals, losses,
    /// anomalies.
    Devices {
        /// gRPC endpoint of the socket's operator API (`operator_listen`).
        #[arg(long, default_value = OPERATOR)]
        operator: String,
        /// The socket's data dir, where its read-only token is (`readonly.token`).
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
    },
    /// Revoke a cable identity for good: refused at every session open with the reason, its
    /// session in progress halted (lockout). Needs the admin token.
    Revoke {
        /// The cable's identity key (33 bytes, hex, as `devices` prints it).
        key: String,
        /// Why (sent to the cable with every refusal, kept in the audit log).
        #[arg(long)]
        reason: String,
        /// gRPC endpoint of the socket's operator API (`operator_listen`).
        #[arg(long, default_value = OPERATOR)]
        operator: String,
        /// The socket's data dir, where its admin token is (`admin.token`).
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
    },
    /// Show an outlet's state, session and energy, asking a running socket.
    Status {
        /// gRPC endpoint of the socket.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        endpoint: String,
        /// Outlet to ask about.
        #[arg(long, default_value = "outlet-1")]
        outlet: String,
    },
    /// Print the socket's identity key (33-byte compressed, hex; seed path m/1017'/0'): what a
    /// cable's policy pins (`trusted_socket_keys`) and what an operator certifies.
    Identity {
        /// The socket's data dir (its seed is created there on first use).
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
    },
    /// Back up a socket's data dir into a new folder, also while it runs: its seed, operator
    /// tokens and every database (store, wallet, Lightning node), each a consistent copy.
    /// Restore only the latest backup: an old Lightning channel state can cost the channel.
    Backup {
        /// The socket's data dir.
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
        /// Where to write the backup: a folder that does not exist yet or is empty.
        #[arg(long)]
        to: PathBuf,
    },
    /// Check the audit log: recompute its hash chain and look up every anchor on chain. Names
    /// the first edited, removed or reordered row; exits with an error when anything fails.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Declare what a cable's appliance is expected to draw (its device profile, seed 004 §4):
    /// every session of it is checked on each meter tick; beyond it, the session is halted and
    /// the cable flagged. `registry export` signs profiles with the rest for other sockets.
    /// Without a declared energy limit, one is learned from the cable's past sessions. Takes
    /// effect at the cable's next session.
    Profile {
        /// The cable's identity key (33 bytes, hex, as `devices` prints it).
        key: String,
        /// The most power its appliance draws, W (omit: no limit).
        #[arg(long)]
        max_power_w: Option<u64>,
        /// The most energy one of its sessions uses, Wh (omit: learned).
        #[arg(long)]
        max_energy_per_session_wh: Option<u64>,
        /// The socket's data dir.
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
    },
    /// Export one session's metering record as JSON: the cable's countersigned receipts
    /// (socket.proto `MeteringReceipt`), the payments credited and the energy counted.
    /// `verify-receipts` checks it.
    Receipts {
        /// The session id (from `sessions` on the dashboard or the operator API).
        session: String,
        /// The socket's data dir.
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
        /// The socket's config, for its meter tolerance (the defaults without it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write the JSON here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an exported session (`receipts SESSION`): every cable and socket signature, the
    /// order of the receipts, that no more was paid than one quota ahead of the energy, and
    /// that the two meters agree within the tolerance. Exits with an error naming every problem.
    VerifyReceipts {
        /// The JSON file `receipts` wrote.
        file: PathBuf,
    },
    /// Operators' signed registries of device identities: export this socket's revocations and profiles,
    /// import another's.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Restore a backup into an empty data dir; `run` on it starts the same socket (identity,
    /// sessions, payments, wallet, channels).
    Restore {
        /// The backup folder (`backup --to`).
        #[arg(long)]
        from: PathBuf,
        /// The new data dir: a folder that does not exist yet or is empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// As an operator, certify a socket's identity for some of its outlets until an expiry
    /// (socket.proto `SocketCertificate`), and write the certificate as JSON for the socket's
    /// `certificates` config. Prints the operator key that cables trust
    /// (`trusted_operator_keys`).
    Certify {
        /// The operator's folder: its seed (created there on first use) gives the operator key
        /// (its identity key, m/1017'/0'). Keep it off the sockets.
        #[arg(long)]
        operator_dir: PathBuf,
        /// The socket identity key to certify (hex, from `socket-node identity`).
        #[arg(long)]
        socket_key: String,
        /// Outlet ids the certificate names, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        outlets: Vec<String>,
        /// Days until the certificate expires.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Where to write the certificate (JSON).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// As an operator, sign the cable identities this socket revoked or flagged into a registry
    /// file (`operator.proto` `SignedRegistry`, JSON) that other sockets import.
    Export {
        /// The operator's folder: its seed gives the operator key (as for `certify`).
        #[arg(long)]
        operator_dir: PathBuf,
        /// The socket's data dir.
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
        /// Where to write the registry (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Import an operator's signed registry: checked whole (signature, an operator of the
    /// config's `registry_operator_keys`, every entry) and applied in one transaction, or
    /// refused whole. Revoked cables are refused at their next session open; a session in
    /// progress is halted by `revoke` on the running socket.
    Import {
        /// The registry file.
        file: PathBuf,
        /// The socket's config (for `registry_operator_keys`).
        #[arg(long)]
        config: PathBuf,
        /// The socket's data dir.
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
    },
}

fn registry_export(
    operator_dir: &std::path::Path,
    data_dir: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let keys = keys_of(operator_dir)?;
    let store = socket_node::store::Store::open(data_dir)
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    let entries = store
        .registry_entries()?
        .into_iter()
        .map(|row| {
            let key: bitcoin::secp256k1::PublicKey = row.key_hex.parse()?;
            let reason = row
                .reason
                .strip_prefix("revoked by the operator: ")
                .unwrap_or(&row.reason)
                .to_owned();
            Ok(proto::v1::RegistryEntry {
                identity_key: key.serialize().to_vec(),
                role: "cable".into(),
                status: match row.status {
                    EntryStatus::Revoked => "revoked",
                    EntryStatus::Flagged => "flagged",
                    EntryStatus::Allowed => "allowed",
                }
                .into(),
                reason,
                profile: row.profile.map(Profile::to_proto),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = proto::v1::RegistryBody {
        operator_key: keys.identity_key().to_bytes(),
        issued_at_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        entries,
    };
    let count = body.entries.len();
    let registry = proto::registry::sign_registry(&body, &keys.identity_secret());
    proto::registry::write_file(&registry, out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("operator key {}", keys.identity_key());
    println!("{count} devices signed into {}", out.display());
    Ok(())
}

fn registry_import(
    file: &std::path::Path,
    config: &std::path::Path,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let config = SocketConfig::load(config)?;
    let trusted = config
        .registry_operator_keys
        .iter()
        .map(|k| {
            k.parse::<bitcoin::secp256k1::PublicKey>()
                .with_context(|| format!("registry_operator_keys: {k:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let registry =
        proto::registry::read_file(file).with_context(|| format!("reading {}", file.display()))?;
    let (operator, entries) = proto::registry::verify_registry(&registry, &trusted)
        .with_context(|| format!("{} refused whole", file.display()))?;
    let store = socket_node::store::Store::open(data_dir)
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    let open = store.import_registry(&operator, &entries)?;
    println!(
        "imported {} devices from operator {operator}",
        entries.len()
    );
    for (session, outlet) in open {
        println!("session {session} on {outlet} is of a revoked cable: halt it with `socket-node revoke`");
    }
    Ok(())
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain of the audit log and check each anchor transaction on chain
    /// (its `OP_RETURN` holds the head; its confirmations).
    Verify {
        /// The socket's config (for bitcoind).
        #[arg(long)]
        config: PathBuf,
        /// The socket's data dir.
        #[arg(long, default_value = "socket-data")]
        data_dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn audit_verify(
    config: &std::path::Path,
    data_dir: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    let config = SocketConfig::load(config)?;
    let store = socket_node::store::Store::open(data_dir)
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    let chain = wallet::chain::Chain::connect(&config.chain, config.network)?;
    let verified = socket_node::anchor::verify(&store, &chain)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&verified)?);
    } else {
        match (&verified.rows, &verified.broken) {
            (Some(rows), _) => println!("audit log: {rows} rows, the hash chain holds"),
            (_, Some(broken)) => println!(
                "audit log BROKEN at row {} ({}): {}",
                broken.seq, broken.kind, broken.detail
            ),
            (None, None) => {}
        }
        for a in &verified.anchors {
            println!(
                "anchor of rows 1..={} in {}: {}, {}, fee {} sat, {} vB",
                a.anchor.seq,
                a.anchor.txid,
                match a.confirmations {
                    Some(n) => format!("{n} confirmations"),
                    None => "NOT ON CHAIN".to_owned(),
                },
                if a.matches {
                    "head matches"
                } else {
                    "HEAD DIFFERS"
                },
                a.anchor.fee_sat,
                a.anchor.vsize
            );
        }
        if verified.anchors.is_empty() {
            println!("no anchors yet (anchor_interval_secs; the wallet needs coins)");
        }
    }
    anyhow::ensure!(verified.ok(), "the audit log does not verify");
    Ok(())
}

/// The identity key of the node whose seed is in `data_dir` (derivation does not depend on the
/// network).
fn keys_of(data_dir: &std::path::Path) -> anyhow::Result<wallet::keys::NodeKeys> {
    wallet::keys::private_data_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    Ok(wallet::keys::NodeKeys::load_or_create(
        data_dir,
        bitcoin::Network::Bitcoin,
    )?)
}

fn set_profile(key: &str, profile: Profile, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let key: bitcoin::secp256k1::PublicKey = key
        .parse()
        .with_context(|| format!("{key:?} is not an identity key"))?;
    anyhow::ensure!(
        data_dir.join("socket.sqlite").exists(),
        "{} holds no socket store (--data-dir)",
        data_dir.display()
    );
    let store = socket_node::store::Store::open(data_dir)
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    store.set_profile(&key.to_string(), profile, "the owner")?;
    let limit =
        |v: Option<u64>, unit: &str| v.map_or("no limit".to_owned(), |v| format!("{v} {unit}"));
    println!(
        "cable {key}: max power {}, max energy per session {}",
        limit(profile.max_power_w, "W"),
        limit(
            profile.max_energy_per_session_wh,
            "Wh (learned from its sessions)"
        )
    );
    Ok(())
}

fn export_receipts(
    session: &str,
    data_dir: &std::path::Path,
    config: Option<&std::path::Path>,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let tolerance = match config {
        Some(path) => SocketConfig::load(path)?.meter_tolerance(),
        None => Default::default(),
    };
    anyhow::ensure!(
        data_dir.join("socket.sqlite").exists(),
        "{} holds no socket store (--data-dir)",
        data_dir.display()
    );
    let key = keys_of(data_dir)?.identity_key().to_string();
    let record = socket_node::receipts::export(data_dir, &key, session, tolerance)?;
    let json = serde_json::to_string_pretty(&record)? + "\n";
    match out {
        Some(path) => {
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{} receipts and {} payments of session {session} written to {}",
                record.receipts.len(),
                record.payments.len(),
                path.display()
            );
        }
        None => print!("{json}"),
    }
    Ok(())
}

fn identity(data_dir: &std::path::Path) -> anyhow::Result<()> {
    println!("{}", keys_of(data_dir)?.identity_key());
    Ok(())
}

fn certify(
    operator_dir: &std::path::Path,
    socket_key: &str,
    outlet_ids: Vec<String>,
    days: u64,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let socket_key: bitcoin::PublicKey = socket_key
        .parse()
        .with_context(|| format!("--socket-key {socket_key:?}"))?;
    anyhow::ensure!(days > 0, "--days must be at least 1");
    let keys = keys_of(operator_dir)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let body = proto::v1::CertificateBody {
        operator_key: keys.identity_key().to_bytes(),
        socket_identity_key: socket_key.to_bytes(),
        outlet_ids,
        expires_at_unix_secs: now.as_secs() + days * 86_400,
    };
    let certificate = proto::identity::certify(&body, &keys.identity_secret());
    proto::identity::CertificateFile::write(&certificate, out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("operator key {}", keys.identity_key());
    println!("certificate written to {}", out.display());
    Ok(())
}

fn backup(data_dir: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    let written = socket_node::backup::backup(data_dir, to)?;
    println!("backed up {} files into {}", written.len(), to.display());
    Ok(())
}

fn restore(from: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let written = socket_node::backup::restore(from, data_dir)?;
    println!(
        "restored {} files into {}; start it with `socket-node run --data-dir {}`",
        written.len(),
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}

/// Default endpoint of the operator API.
const OPERATOR: &str = "http://127.0.0.1:50052";

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into a log file or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(
    config: PathBuf,
    data_dir: PathBuf,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let mut config = SocketConfig::load(&config)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let address = config.listen;
    let operator_address = config.operator_listen;
    let http_address = config.http_listen;
    wallet::keys::private_data_dir(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let tokens = Tokens::load_or_create(&data_dir).context("the operator tokens")?;
    let http_tokens = tokens.clone();
    let station = tokio::task::spawn_blocking(move || Station::start(config, &data_dir)).await??;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let operator_listener = tokio::net::TcpListener::bind(operator_address)
        .await
        .with_context(|| format!("cannot listen on {operator_address} (operator_listen)"))?;
    let http_listener = tokio::net::TcpListener::bind(http_address)
        .await
        .with_context(|| format!("cannot listen on {http_address} (http_listen)"))?;
    tracing::info!(%address, operator = %operator_address, "serving t2t.v1.Socket and t2t.v1.Operator");
    tracing::info!(dashboard = %format!("http://{http_address}/"), "serving the dashboard, /api/v1 and /metrics");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = socket_node::http::stopped;
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
    // The cable-facing server, with its limits (socket_node::limits): streams per connection,
    // message size, call time, keepalive, connections, and request rates (the interceptor,
    // before a request is decoded further).
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
            socket_node::error::undecodable_is_invalid::<tonic::body::Body>,
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
            socket_node::limits::limit_connections(
                // No Nagle: a request or reply waiting for the peer's delayed ACK costs ~40 ms.
                TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(keepalive)),
                limits.max_connections,
                limits.max_connections_per_host,
            ),
            stopped(stop_rx.clone()),
        );
    let http = socket_node::http::serve(
        http_listener,
        Arc::clone(&station),
        http_tokens,
        stop_rx.clone(),
    );
    let servers = tokio::spawn(async move {
        tokio::try_join!(
            async { cables.await.context("the cable-facing gRPC server") },
            async { operator.await.context("the operator gRPC server") },
            async { http.await.context("the dashboard's HTTP server") }
        )
    });
    // Under systemd (Type=notify): ready once every server listens and every outlet runs.
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    shutdown_signal().await;
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping: opening every relay");
    health
        .set_not_serving::<SocketServer<SocketService>>()
        .await;
    let _ = stop_tx.send(true);
    station.stop().await;
    servers.await??;
    Ok(())
}

/// Tell systemd (when `NOTIFY_SOCKET` says it waits for us; otherwise nothing).
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn operator_client(
    endpoint: &str,
) -> anyhow::Result<OperatorClient<tonic::transport::Channel>> {
    OperatorClient::connect(endpoint.to_owned())
        .await
        .with_context(|| {
            format!(
                "no socket-node operator API answers at {endpoint} (is `socket-node run` running?)"
            )
        })
}

/// A request carrying the token of `scope` from `data_dir`.
fn authorized<T>(
    message: T,
    data_dir: &std::path::Path,
    scope: Scope,
) -> anyhow::Result<tonic::Request<T>> {
    let token = tokens::read_token(data_dir, scope)?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?,
    );
    Ok(request)
}

async fn channels(endpoint: String, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let request = authorized(ListChannelsRequest {}, data_dir, Scope::ReadOnly)?;
    let list = operator_client(&endpoint)
        .await?
        .list_channels(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if list.channels.is_empty() {
        println!("no channels");
    }
    for c in &list.channels {
        println!(
            "{} peer {} capacity {} sat, can send {} msat, can receive {} msat, {}",
            c.channel_id,
            c.counterparty_node_id,
            c.capacity_sat,
            c.outbound_msat,
            c.inbound_msat,
            c.state
        );
    }
    println!(
        "Lightning wallet on chain: {} sat spendable",
        list.onchain_spendable_sat
    );
    Ok(())
}

async fn close_channel(
    endpoint: String,
    data_dir: &std::path::Path,
    channel_id: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let request = CloseChannelRequest {
        channel_id: channel_id.unwrap_or_default(),
        force,
    };
    let request = authorized(request, data_dir, Scope::Admin)?;
    let closing = operator_client(&endpoint)
        .await?
        .close_channel(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .closing;
    for id in closing {
        if force {
            println!("{id} force-closed; the socket's funds return after the to_self_delay");
        } else {
            println!("{id} closing");
        }
    }
    Ok(())
}

async fn devices(endpoint: String, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut client = operator_client(&endpoint).await?;
    let mut devices = Vec::new();
    let mut after = Vec::new();
    loop {
        let request = authorized(
            proto::v1::ListDevicesRequest {
                limit: 1_000,
                after_identity_key: after,
            },
            data_dir,
            Scope::ReadOnly,
        )?;
        let page = client
            .list_devices(request)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        devices.extend(page.devices);
        if page.next_after_identity_key.is_empty() {
            break;
        }
        after = page.next_after_identity_key;
    }
    if devices.is_empty() {
        println!("no devices yet");
    }
    for d in devices {
        println!(
            "{} {} {}{}: {} sessions, {:.3} Wh, {} sat, {} refusals, {} sat lost, {} anomalies",
            d.identity_key.to_lower_hex_string(),
            d.role,
            d.status,
            if d.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.reason)
            },
            d.sessions,
            d.energy_used_mwh as f64 / 1_000.0,
            d.revenue_msat / 1_000,
            d.refusals,
            d.lost_sat,
            d.anomalies
        );
    }
    Ok(())
}

async fn revoke(
    endpoint: String,
    data_dir: &std::path::Path,
    key: &str,
    reason: String,
) -> anyhow::Result<()> {
    let key: bitcoin::secp256k1::PublicKey = key
        .parse()
        .with_context(|| format!("{key:?} is not a cable identity key"))?;
    let request = authorized(
        proto::v1::RevokeDeviceRequest {
            identity_key: key.serialize().to_vec(),
            reason,
        },
        data_dir,
        Scope::Admin,
    )?;
    let halted = operator_client(&endpoint)
        .await?
        .revoke_device(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .sessions_halted;
    println!("{key} revoked");
    for session in halted {
        println!("session {session} halted");
    }
    Ok(())
}

async fn status(endpoint: String, outlet: String) -> anyhow::Result<()> {
    let mut client = SocketClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("no socket answers at {endpoint}"))?;
    let s = client
        .get_status(GetStatusRequest { outlet_id: outlet })
        .await?
        .into_inner();
    let state = OutletState::try_from(s.state).unwrap_or(OutletState::Unspecified);
    println!("outlet:     {}", s.outlet_id);
    println!(
        "state:      {}",
        state.as_str_name().trim_start_matches("OUTLET_STATE_")
    );
    println!(
        "relay:      {}",
        if s.relay_closed { "closed" } else { "open" }
    );
    println!("power:      {:.1} W", s.power_mw as f64 / 1000.0);
    if !s.session_hash.is_empty() {
        // The public status names a session by the SHA256 of its id only.
        println!(
            "session:    SHA256(id) = {}",
            s.session_hash.to_lower_hex_string()
        );
        println!(
            "energy:     {:.3} Wh used, {:.3} Wh paid and left",
            s.energy_used_mwh as f64 / 1000.0,
            s.quota_remaining_mwh as f64 / 1000.0
        );
        println!("payments:   {}", s.payments);
    }
    if state == OutletState::Lockout {
        println!(
            "lockout:    {} s left: {}",
            s.lockout_remaining_secs, s.reason
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Crash points from FAILPOINTS, in builds with the `failpoints` feature (tests only).
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            data_dir,
            listen,
            json_logs,
        } => {
            init_logs(json_logs);
            run(config, data_dir, listen).await
        }
        Command::Channels { operator, data_dir } => {
            init_logs(false);
            channels(operator, &data_dir).await
        }
        Command::CloseChannel {
            operator,
            data_dir,
            channel_id,
            force,
        } => {
            init_logs(false);
            close_channel(operator, &data_dir, channel_id, force).await
        }
        Command::Devices { operator, data_dir } => {
            init_logs(false);
            devices(operator, &data_dir).await
        }
        Command::Revoke {
            key,
            reason,
            operator,
            data_dir,
        } => {
            init_logs(false);
            revoke(operator, &data_dir, &key, reason).await
        }
        Command::Status { endpoint, outlet } => {
            init_logs(false);
            status(endpoint, outlet).await
        }
        Command::Backup { data_dir, to } => backup(&data_dir, &to),
        Command::Restore { from, data_dir } => restore(&from, &data_dir),
        Command::Registry {
            command:
                RegistryCommand::Export {
                    operator_dir,
                    data_dir,
                    out,
                },
        } => registry_export(&operator_dir, &data_dir, &out),
        Command::Registry {
            command:
                RegistryCommand::Import {
                    file,
                    config,
                    data_dir,
                },
        } => registry_import(&file, &config, &data_dir),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    config,
                    data_dir,
                    json,
                },
        } => audit_verify(&config, &data_dir, json),
        Command::Identity { data_dir } => identity(&data_dir),
        Command::Profile {
            key,
            max_power_w,
            max_energy_per_session_wh,
            data_dir,
        } => set_profile(
            &key,
            Profile {
                max_power_w: max_power_w.filter(|&w| w > 0),
                max_energy_per_session_wh: max_energy_per_session_wh.filter(|&w| w > 0),
            },
            &data_dir,
        ),
        Command::Receipts {
            session,
            data_dir,
            config,
            out,
        } => export_receipts(&session, &data_dir, config.as_deref(), out.as_deref()),
        Command::VerifyReceipts { file } => {
            socket_node::receipts::verify_file(&file).map(|summary| {
                println!(
                    "{}: {} receipts and {} payments verify; {} mWh counted of {} mWh paid{}",
                    file.display(),
                    summary.receipts,
                    summary.payments,
                    summary.energy_used_mwh,
                    summary.paid_mwh,
                    summary
                        .cable_energy_mwh
                        .map(|c| format!(", the cable's meter {c} mWh"))
                        .unwrap_or_default()
                )
            })
        }
        Command::Certify {
            operator_dir,
            socket_key,
            outlets,
            days,
            out,
        } => certify(&operator_dir, &socket_key, outlets, days, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
