//! `socket-node`: the smart socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proto::registry::Profile;
use socket_node::config::SocketConfig;
use socket_node::node::Node;

mod cli;

/// Default endpoint of the operator API.
const OPERATOR: &str = "http://127.0.0.1:50052";

use cli::offline::{
    audit_verify, backup, certify, export_receipts, identity, registry_export, registry_import,
    restore, set_profile,
};
use cli::operator::{channels, close_channel, devices, revoke, status};

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
        /// TOML config (every key: docs/configuration.md).
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

/// `socket-node run`: the [`Node`] of `config` on `data_dir` until SIGINT or SIGTERM.
async fn run(
    config: PathBuf,
    data_dir: PathBuf,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let mut config = SocketConfig::load(&config)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let node = Node::start(config, &data_dir).await?;
    // Under systemd (Type=notify): ready once every server listens and every outlet runs.
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    shutdown_signal().await;
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    node.stop().await
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
