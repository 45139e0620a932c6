//! A persistent regtest node under a data dir, for manual use and the demo: started detached
//! with bitcoind's own `-daemon`, reached again by later commands through a small state file.
//!
//! Layout of the data dir: `t2t-regtest.json` (RPC port and faucet key; kept across `down` and
//! `up` so the faucet keeps its coins), bitcoind's datadir in the same folder (`regtest/` with the
//! chain, the `.cookie` and `bitcoind.pid`), and `bitcoind.out` with what bitcoind printed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::{Address, Amount, BlockHash, OutPoint};
use corepc_node::client::client_sync::Auth;
use corepc_node::Client;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{bitcoind_exe, rpc, Faucet, RegtestError, NODE_ARGS};

const STATE_FILE: &str = "t2t-regtest.json";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
struct State {
    rpc_port: u16,
    faucet_wif: String,
}

/// A running persistent node.
pub struct Daemon {
    data_dir: PathBuf,
    rpc_port: u16,
    client: Client,
    faucet: Faucet,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonStatus {
    /// RPC endpoint.
    pub rpc_url: String,
    /// Cookie file for RPC auth.
    pub cookie_file: PathBuf,
    /// Chain tip height.
    pub height: u32,
    /// Transactions waiting in the mempool.
    pub mempool_txs: u64,
    /// Address that mined blocks pay by default.
    pub faucet_address: String,
}

fn io_error(path: &Path, source: std::io::Error) -> RegtestError {
    RegtestError::Io {
        path: path.to_owned(),
        source,
    }
}

fn cookie_file(data_dir: &Path) -> PathBuf {
    data_dir.join("regtest").join(".cookie")
}

fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("regtest").join("bitcoind.pid")
}

fn rpc_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn read_state(data_dir: &Path) -> Result<Option<State>, RegtestError> {
    let path = data_dir.join(STATE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RegtestError::Node(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path, e)),
    }
}

fn write_state(data_dir: &Path, state: &State) -> Result<(), RegtestError> {
    let path = data_dir.join(STATE_FILE);
    let partial = data_dir.join(format!(".{STATE_FILE}.partial"));
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    fs::write(&partial, text).map_err(|e| io_error(&partial, e))?;
    fs::rename(&partial, &path).map_err(|e| io_error(&path, e))
}

/// A client for the node on `port` if it answers RPC now.
fn answering_client(data_dir: &Path, port: u16) -> Option<Client> {
    let cookie = cookie_file(data_dir);
    if !cookie.is_file() {
        return None;
    }
    let client = Client::new_with_auth(&rpc_url(port), Auth::CookieFile(cookie)).ok()?;
    client
        .call::<Value>("getblockchaininfo", &[])
        .ok()
        .map(|_| client)
}

impl Daemon {
    /// Start a node under `data_dir` (created if missing) and wait until it answers RPC.
    ///
    /// Errors: [`RegtestError::AlreadyUp`] when a node of this data dir answers already;
    /// [`RegtestError::Node`] with bitcoind's own words when it fails to start.
    pub fn up(data_dir: &Path) -> Result<Daemon, RegtestError> {
        fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, e))?;
        let data_dir = data_dir.canonicalize().map_err(|e| io_error(data_dir, e))?;
        let previous = read_state(&data_dir)?;
        if let Some(state) = &previous {
            if answering_client(&data_dir, state.rpc_port).is_some() {
                return Err(RegtestError::AlreadyUp {
                    data_dir,
                    rpc_url: rpc_url(state.rpc_port),
                });
            }
        }
        if pid_file(&data_dir).exists() {
            return Err(RegtestError::Node(format!(
                "{} exists but the node does not answer: it may be starting or stopping, or it \
                 crashed (then delete the pid file)",
                pid_file(&data_dir).display()
            )));
        }
        let faucet = match &previous {
            Some(state) => Faucet::from_wif(&state.faucet_wif)?,
            None => Faucet::generate(),
        };
        // The same RPC port as last time when it is free, so configs written for it still work.
        let previous_port = previous
            .as_ref()
            .map(|state| state.rpc_port)
            .filter(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        let rpc_port = match previous_port {
            Some(port) => port,
            None => corepc_node::get_available_port()
                .map_err(|e| RegtestError::Node(format!("no free port: {e}")))?,
        };
        let exe = bitcoind_exe()?;
        let out_path = data_dir.join("bitcoind.out");
        let out = fs::File::create(&out_path).map_err(|e| io_error(&out_path, e))?;
        let status = Command::new(&exe)
            .args(NODE_ARGS)
            .arg(format!("-datadir={}", data_dir.display()))
            .arg(format!("-rpcport={rpc_port}"))
            .args(["-listen=0", "-daemon=1"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| io_error(&out_path, e))?)
            .stderr(out)
            .status()
            .map_err(|e| RegtestError::Node(format!("cannot run {}: {e}", exe.display())))?;
        if !status.success() {
            let said = fs::read_to_string(&out_path).unwrap_or_default();
            return Err(RegtestError::Node(format!(
                "bitcoind failed to start ({status}): {}",
                said.trim()
            )));
        }
        write_state(
            &data_dir,
            &State {
                rpc_port,
                faucet_wif: faucet.wif(),
            },
        )?;
        let started = Instant::now();
        loop {
            if let Some(client) = answering_client(&data_dir, rpc_port) {
                return Ok(Daemon {
                    data_dir,
                    rpc_port,
                    client,
                    faucet,
                });
            }
            if started.elapsed() > START_TIMEOUT {
                let log = data_dir.join("regtest").join("debug.log");
                return Err(RegtestError::Node(format!(
                    "bitcoind did not answer RPC within {}s; see {}",
                    START_TIMEOUT.as_secs(),
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reach the node running under `data_dir`. Errors with [`RegtestError::NotUp`] when none
    /// answers.
    pub fn connect(data_dir: &Path) -> Result<Daemon, RegtestError> {
        let not_up = || RegtestError::NotUp(data_dir.to_owned());
        let state = read_state(data_dir)?.ok_or_else(not_up)?;
        let client = answering_client(data_dir, state.rpc_port).ok_or_else(not_up)?;
        Ok(Daemon {
            data_dir: data_dir.to_owned(),
            rpc_port: state.rpc_port,
            client,
            faucet: Faucet::from_wif(&state.faucet_wif)?,
        })
    }

    /// The RPC client (cookie auth).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// RPC endpoint.
    pub fn rpc_url(&self) -> String {
        rpc_url(self.rpc_port)
    }

    /// The cookie file that authenticates RPC clients.
    pub fn cookie_file(&self) -> PathBuf {
        cookie_file(&self.data_dir)
    }

    /// The faucet of this node.
    pub fn faucet(&self) -> &Faucet {
        &self.faucet
    }

    /// Height, mempool size and where to reach the node.
    pub fn status(&self) -> Result<DaemonStatus, RegtestError> {
        let mempool: Value = rpc(&self.client, "getmempoolinfo", &[])?;
        Ok(DaemonStatus {
            rpc_url: self.rpc_url(),
            cookie_file: self.cookie_file(),
            height: rpc(&self.client, "getblockcount", &[])?,
            mempool_txs: mempool["size"].as_u64().unwrap_or(0),
            faucet_address: self.faucet.address().to_string(),
        })
    }

    /// Mine `blocks` blocks to `to`, or to the faucet.
    pub fn mine(&self, blocks: u32, to: Option<&Address>) -> Result<Vec<BlockHash>, RegtestError> {
        self.faucet
            .mine_to(&self.client, blocks, to.unwrap_or(self.faucet.address()))
    }

    /// Pay exactly `amount` to `to` in a confirmed transaction.
    pub fn fund(&self, to: &Address, amount: Amount) -> Result<OutPoint, RegtestError> {
        self.faucet.fund(&self.client, to, amount)
    }

    /// Stop the node and wait until it has exited. The chain and faucet stay in the data dir.
    pub fn down(self) -> Result<(), RegtestError> {
        rpc::<Value>(&self.client, "stop", &[])?;
        let started = Instant::now();
        while pid_file(&self.data_dir).exists() {
            if started.elapsed() > STOP_TIMEOUT {
                return Err(RegtestError::Node(format!(
                    "bitcoind did not stop within {}s",
                    STOP_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}
