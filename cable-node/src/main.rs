//! `cable-node`: the smart cable.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cable_node::config::CableConfig;
use cable_node::payer::{Cable, CableError};
use clap::{Parser, Subcommand};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use wallet::keys::NodeKeys;
use wallet::onchain::NodeWallet;

/// A smart cable that pays a smart socket for electricity, by itself, in bitcoin: it checks
/// the socket's offer against its policy, pays one quota at a time, and closes the relay to its
/// appliance only once paid.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// TOML config (every key: docs/configuration.md).
    #[arg(long, global = true, default_value = "cable.toml")]
    config: PathBuf,
    /// Folder of the seed, wallet and store; created on first start.
    #[arg(long, global = true, default_value = "cable-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plug in: pay the socket quota by quota until the appliance is done. SIGTERM or SIGINT
    /// unplugs cleanly (the session ends, the appliance relay opens) between payments.
    Run {
        /// gRPC endpoint of the socket, overriding the config.
        #[arg(long)]
        socket: Option<String>,
        /// Write a JSON report of the session here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
    },
    /// Print the address to fund the cable with, and its QR code.
    Address {
        /// The address of the Lightning node's wallet, which funds channels.
        #[arg(long)]
        lightning: bool,
    },
    /// Print the wallet's balance (syncs with bitcoind first).
    Balance,
    /// Broadcast the refund of every spillman channel the socket never closed whose lock
    /// height is reached (`run` does this too before each session).
    Refund,
    /// List the Lightning channels: peer, capacity, what the cable can still send, state.
    Channels,
    /// Open a Lightning channel to the configured socket, or to the configured hub, if the cable
    /// cannot pay the socket yet; wait until it can.
    OpenChannel,
    /// Close the Lightning channels: cooperatively, or with --force when the peer is gone (the
    /// cable's funds return on chain after the channel's to_self_delay).
    CloseChannel {
        /// Broadcast our latest commitment instead of negotiating a close.
        #[arg(long)]
        force: bool,
    },
    /// Print the cable's 12 recovery words (BIP39): the one backup of its on-chain coins and
    /// of its Lightning node's keys (seed 000 §VIII.B). Write them down, keep them offline.
    Seed {
        /// Also show them as a QR code, for a phone that keeps them.
        #[arg(long)]
        qr: bool,
    },
    /// The cable's registry of sockets: every socket it ran a session with, and the ones it
    /// caught counting more than its own meter or storming QuotaLows (flagged, with the
    /// evidence: their offers are refused). `--allow KEY` trusts a flagged socket again.
    Sockets {
        /// Allow this flagged socket (identity key, hex) again.
        #[arg(long)]
        allow: Option<String>,
        /// Print the registry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take the 12 recovery words of a broken cable, read from standard input (never from the
    /// command line, where they would stay in the shell's history), into a data dir that has
    /// no seed yet; the wallet finds its coins on its next sync (`balance`, `run`).
    Restore,
}

/// Run `f` with the cable's Lightning node, stopped afterwards.
fn with_lightning<T>(
    cli: &Cli,
    config: &CableConfig,
    f: impl FnOnce(&std::sync::Arc<ln::ldk_node::Node>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    wallet::keys::private_data_dir(&cli.data_dir)
        .with_context(|| format!("creating {}", cli.data_dir.display()))?;
    let keys = NodeKeys::load_or_create(&cli.data_dir, config.network)?;
    let node = tokio::task::block_in_place(|| {
        ln::start_node(
            &cli.data_dir,
            &keys,
            &config.chain,
            &ln::LnSettings::default(),
        )
    })?;
    let result = tokio::task::block_in_place(|| {
        let _ = node.sync_wallets();
        f(&node)
    });
    let _ = tokio::task::block_in_place(|| node.stop());
    result
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

async fn run(cli: Cli) -> Result<(), CableError> {
    let mut config = CableConfig::load(&cli.config)?;
    match cli.command {
        Command::Run { socket, report, .. } => {
            if let Some(socket) = socket {
                config.socket = socket;
            }
            let data_dir = cli.data_dir.clone();
            let mut cable = tokio::task::block_in_place(|| Cable::open(config, &data_dir))?;
            // Under systemd (Type=notify): ready once the wallet and store are open.
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            let session = cable.run_session().await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            let session = session?;
            println!(
                "session {}: {} ({} payments, {} sat, {:.3} Wh)",
                session.session_id,
                session.outcome,
                session.payments.len(),
                session.payments.iter().map(|p| p.amount_sat).sum::<u64>(),
                session.energy_used_mwh as f64 / 1000.0
            );
            if let Some(path) = report {
                let json = serde_json::to_string_pretty(&session).context("report")?;
                std::fs::write(&path, json)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Address { lightning } => {
            wallet::keys::private_data_dir(&cli.data_dir)
                .with_context(|| format!("creating {}", cli.data_dir.display()))?;
            let keys = NodeKeys::load_or_create(&cli.data_dir, config.network)
                .map_err(anyhow::Error::from)?;
            let address = if lightning {
                let node = tokio::task::block_in_place(|| {
                    ln::start_node(
                        &cli.data_dir,
                        &keys,
                        &config.chain,
                        &ln::LnSettings::default(),
                    )
                })
                .map_err(anyhow::Error::from)?;
                let address = node
                    .onchain_payment()
                    .new_address()
                    .context("Lightning address")?;
                let _ = tokio::task::block_in_place(|| node.stop());
                address.to_string()
            } else {
                let mut wallet =
                    NodeWallet::open(&cli.data_dir, &keys).map_err(anyhow::Error::from)?;
                wallet
                    .receive_address(0)
                    .map_err(anyhow::Error::from)?
                    .to_string()
            };
            let qr = QrCode::new(format!("bitcoin:{address}").as_bytes()).context("QR code")?;
            println!("{}", qr.render::<Dense1x2>().quiet_zone(true).build());
            println!("{address}");
        }
        Command::Channels => {
            with_lightning(&cli, &config, |node| {
                let channels = node.list_channels();
                if channels.is_empty() {
                    println!("no channels");
                }
                for c in channels {
                    println!(
                        "{} peer {} capacity {} sat, can send {} msat, {}",
                        c.channel_id,
                        c.counterparty_node_id,
                        c.channel_value_sats,
                        c.outbound_capacity_msat,
                        if c.is_usable {
                            "usable"
                        } else if c.is_channel_ready {
                            "ready, peer offline"
                        } else {
                            "pending"
                        }
                    );
                }
                let balances = node.list_balances();
                println!(
                    "Lightning wallet on chain: {} sat spendable",
                    balances.spendable_onchain_balance_sats
                );
                Ok(())
            })?;
        }
        Command::OpenChannel => {
            let mut client = proto::v1::socket_client::SocketClient::connect(config.socket.clone())
                .await
                .with_context(|| format!("no socket answers at {}", config.socket))?;
            let nonce: [u8; 32] = bitcoin::secp256k1::rand::random();
            let signed = client
                .get_offer(proto::v1::GetOfferRequest {
                    outlet_id: config.outlet_id.clone(),
                    cable_nonce: nonce.to_vec(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("GetOffer: {}", s.message()))?
                .into_inner();
            let offer = config
                .policy
                .check_signed_offer(&signed, &config.outlet_id, &nonce, config.network)
                .map_err(|reason| anyhow::anyhow!("the socket's offer: {reason}"))?
                .offer;
            let terms = proto::terms::offered_lightning(&offer)
                .map_err(|e| anyhow::anyhow!("the socket's offer: {e}"))?;
            let socket = cable_node::lightning::peer_of(&terms.node_id, &terms.address)?;
            let settings = config.lightning.clone();
            with_lightning(&cli, &config, |node| {
                match cable_node::lightning::ensure_route(node, &socket, 0, &settings)? {
                    Some(txid) => println!("channel opened in {txid} and usable"),
                    None => println!("the cable can pay {} already", socket.node_id),
                }
                Ok(())
            })?;
        }
        Command::CloseChannel { force } => {
            with_lightning(&cli, &config, |node| {
                let channels = node.list_channels();
                if channels.is_empty() {
                    println!("no channels to close");
                }
                for c in channels {
                    if force {
                        node.force_close_channel(
                            &c.user_channel_id,
                            c.counterparty_node_id,
                            Some("closed by its owner".into()),
                        )
                        .with_context(|| format!("force-closing {}", c.channel_id))?;
                        println!(
                            "{} force-closed; the funds return after the to_self_delay",
                            c.channel_id
                        );
                    } else {
                        cable_node::lightning::close_cooperatively(node, &c)?;
                        println!("{} closed cooperatively", c.channel_id);
                    }
                }
                Ok(())
            })?;
        }
        Command::Refund => {
            let data_dir = cli.data_dir.clone();
            let mut cable = tokio::task::block_in_place(|| Cable::open(config, &data_dir))?;
            let refunded = cable.refund_due()?;
            if refunded.is_empty() {
                println!("no refund due");
            }
            for txid in refunded {
                println!("refund broadcast: {txid}");
            }
        }
        Command::Sockets { allow, json } => {
            let store = cable_node::store::CableStore::open(&cli.data_dir)
                .context("opening the cable's store")?;
            if let Some(key) = allow {
                if !store
                    .allow_socket(&key)
                    .context("the registry of sockets")?
                {
                    return Err(anyhow::anyhow!("no socket {key} in the registry").into());
                }
                println!("socket {key} allowed again");
            }
            let sockets = store.sockets().context("the registry of sockets")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sockets).context("JSON")?
                );
            } else if sockets.is_empty() {
                println!("no sockets yet");
            } else {
                for s in sockets {
                    println!(
                        "{} {:?} sessions {}{}",
                        s.identity_key,
                        s.status,
                        s.sessions,
                        s.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    );
                }
            }
        }
        Command::Seed { qr } => {
            wallet::keys::private_data_dir(&cli.data_dir)
                .with_context(|| format!("creating {}", cli.data_dir.display()))?;
            let keys = NodeKeys::load_or_create(&cli.data_dir, config.network)
                .map_err(anyhow::Error::from)?;
            let words = keys.mnemonic().to_string();
            eprintln!(
                "These words are all it takes to spend this cable's money: keep them offline."
            );
            println!("{words}");
            if qr {
                let qr = QrCode::new(words.as_bytes()).context("QR code")?;
                println!("{}", qr.render::<Dense1x2>().quiet_zone(true).build());
            }
        }
        Command::Restore => {
            let mut words = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut words)
                .context("reading the words from standard input")?;
            wallet::keys::private_data_dir(&cli.data_dir)
                .with_context(|| format!("creating {}", cli.data_dir.display()))?;
            let keys = NodeKeys::restore(&cli.data_dir, &words, config.network)
                .map_err(anyhow::Error::from)?;
            println!(
                "restored into {}: identity key {}; `balance` finds the coins",
                cli.data_dir.display(),
                keys.identity_key()
            );
        }
        Command::Balance => {
            let data_dir = cli.data_dir.clone();
            let mut cable = tokio::task::block_in_place(|| Cable::open(config, &data_dir))?;
            tokio::task::block_in_place(|| cable.sync())?;
            let balance = cable.wallet().balance();
            println!("confirmed: {}", balance.confirmed.display_dynamic());
            println!(
                "pending:   {}",
                (balance.trusted_pending + balance.untrusted_pending).display_dynamic()
            );
            println!("immature:  {}", balance.immature.display_dynamic());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Crash points from FAILPOINTS, in builds with the `failpoints` feature (tests only).
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    init_logs(matches!(
        cli.command,
        Command::Run {
            json_logs: true,
            ..
        }
    ));
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
