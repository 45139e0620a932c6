//! Crash points at every persistence point of both nodes (design.md "Durability before action";
//! issue 14). Every write of either store runs through `persist("<point>", ...)`
//! (`wallet/src/persist.rs`, one for both stores); in the test build
//! `FAILPOINTS=<point>=return` aborts the node right after that write committed.
//!
//! - [`every_store_write_is_a_persistence_point`] reads both stores' source: a write outside
//!   `persist` fails it, so a new persistence point cannot go without its crash point.
//! - [`a_crash_at_every_persistence_point_loses_nothing`] runs every scheme, the owner's
//!   commands and the trust records with every point not yet fired armed in both nodes; each
//!   crash fires one, the node is started again without it, and the session carries on. At the
//!   end every point has fired (or is crashed by the test named in [`ELSEWHERE`]), and the books
//!   agree: every payment the socket credited is one the cable signed, every one the cable
//!   holds as accepted the socket credited, nothing failed or lost, no honest cable banned, every credited transaction on
//!   the chain, each spillman close paying exactly what was credited.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bitcoin::Amount;
use integration::{
    binary, query_i64, query_pairs, CableFiles, CableSetup, Miner, SocketProcess, SocketSetup,
};
use proto::v1::OutletState;
use regtest::Regtest;
use serde_json::{json, Value};

/// Points crashed by another test (that test's file names the point): the ones only a cheating
/// cable reaches.
const ELSEWHERE: &[(&str, &str)] = &[
    ("socket-record-loss", "replaced_payment.rs"),
    ("socket-count-refusal", "spillman_cheats.rs"),
];

/// Every persistence point in the source of `node`'s store, in file order. Panics, naming the
/// function, at a write of the store that does not run inside `persist`.
fn points_of(node: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(node)
        .join("src/store");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs") && !p.ends_with("persist.rs"))
        .collect();
    files.sort();
    let mut points = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // The unit tests at the end write freely.
        let text = text.split("#[cfg(test)]").next().unwrap();
        // Each method of the store, to the end of its body.
        for method in text.split("\n    pub fn ").skip(1) {
            let method = method.split("\n    }\n").next().unwrap();
            let name = method.split(['(', '<']).next().unwrap();
            let writes = [
                ".execute(",
                ".commit()",
                "execute_batch",
                "transaction()",
                "&self.db,",
                "&self.db)",
            ]
            .iter()
            .any(|w| method.contains(w));
            let named: Vec<&str> = method
                .split("persist(\"")
                .skip(1)
                .map(|rest| rest.split('"').next().unwrap())
                .collect();
            assert!(
                !writes || !named.is_empty(),
                "{}: `{name}` writes the store outside `persist(\"<point>\", ...)`: give it a \
                 persistence point",
                file.display()
            );
            points.extend(named.iter().map(|s| s.to_string()));
        }
    }
    points
}

#[test]
fn every_store_write_is_a_persistence_point() {
    let socket = points_of("socket-node");
    let cable = points_of("cable-node");
    assert!(
        socket.len() >= 30 && cable.len() >= 15,
        "{socket:?} {cable:?}"
    );
    let all: BTreeSet<&String> = socket.iter().chain(&cable).collect();
    assert_eq!(all.len(), socket.len() + cable.len(), "a point named twice");
    assert!(socket.iter().all(|p| p.starts_with("socket-")));
    assert!(cable.iter().all(|p| p.starts_with("cable-")));
    for (point, test) in ELSEWHERE {
        assert!(all.contains(&point.to_string()), "{point} is no point");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/it")
                .join(test),
        )
        .unwrap();
        assert!(text.contains(point), "{test} does not crash at {point}");
    }
}

/// What an armed persistence point does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `<point>=return`: abort right after the write committed.
    Crash,
    /// `<point>-fails=return`: the write fails (an injected store error), the node goes on.
    StoreFailure,
}

impl Fault {
    /// `FAILPOINTS` arming each of `points` once.
    fn armed(self, points: &BTreeSet<String>) -> Vec<(String, String)> {
        let suffix = match self {
            Fault::Crash => "",
            Fault::StoreFailure => "-fails",
        };
        let spec: Vec<String> = points
            .iter()
            .map(|p| format!("{p}{suffix}=1*return"))
            .collect();
        vec![("FAILPOINTS".to_owned(), spec.join(";"))]
    }

    /// The points a node's log says fired (`persist` prints one line each).
    fn fired_in(self, log: &str) -> BTreeSet<String> {
        let marker = match self {
            Fault::Crash => "crash point ",
            Fault::StoreFailure => "injected store failure at ",
        };
        log.lines()
            .filter_map(|line| line.split(marker).nth(1))
            .filter_map(|rest| {
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .next()
            })
            .map(str::to_owned)
            .collect()
    }
}

/// The points fired so far, and what is left to arm.
struct Crashes {
    fault: Fault,
    socket_left: BTreeSet<String>,
    cable_left: BTreeSet<String>,
    fired: BTreeSet<String>,
}

impl Crashes {
    fn new(fault: Fault) -> Self {
        Crashes {
            fault,
            socket_left: points_of("socket-node").into_iter().collect(),
            cable_left: points_of("cable-node").into_iter().collect(),
            fired: BTreeSet::new(),
        }
    }

    /// Note the points fired in `log`; how many are new.
    fn note(&mut self, log: &str) -> usize {
        let mut new = 0;
        for point in self.fault.fired_in(log) {
            self.socket_left.remove(&point);
            self.cable_left.remove(&point);
            if self.fired.insert(point.clone()) {
                eprintln!("{:?} at {point}", self.fault);
                new += 1;
            }
        }
        new
    }

    /// Start the socket again with the points left armed, as often as it crashes on the way up.
    fn restart_socket(&mut self, socket: &mut SocketProcess) {
        for _ in 0..20 {
            socket.env = self.fault.armed(&self.socket_left);
            match socket.restart() {
                Ok(()) => return,
                Err(e) => {
                    assert!(self.note(&socket.log_text()) > 0, "the socket died: {e:#}");
                }
            }
        }
        panic!("the socket keeps crashing:\n{}", socket.log_text());
    }

    /// Keep the socket up: started again (armed) if it crashed; whether it had.
    fn keep_socket_up(&mut self, socket: &mut SocketProcess) -> bool {
        if socket.is_running() {
            return false;
        }
        let new = self.note(&socket.log_text());
        assert!(
            new > 0,
            "the socket died of no crash point:\n{}",
            socket.log_text()
        );
        self.restart_socket(socket);
        true
    }

    /// `cable-node run` to its end with the points left armed in both nodes, starting whichever
    /// crashed again. Returns the last run's success and how many points fired.
    fn run_through(&mut self, socket: &mut SocketProcess, cable: &mut CableFiles) -> (bool, usize) {
        let before = self.fired.len();
        cable.env = self.fault.armed(&self.cable_left);
        let mut child: Child = cable.spawn_run().unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        let success = loop {
            assert!(
                Instant::now() < deadline,
                "no end\ncable:\n{}\nsocket:\n{}",
                std::fs::read_to_string(&cable.log).unwrap_or_default(),
                socket.log_text()
            );
            self.keep_socket_up(socket);
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&cable.log).unwrap_or_default();
                eprintln!("cable run: {}", tail(&log, 1));
                if self.note(&log) == 0 {
                    let tail: Vec<&str> = log.lines().rev().take(6).collect();
                    eprintln!("cable run ended {status}: {tail:#?}");
                    break status.success();
                }
                cable.env = self.fault.armed(&self.cable_left);
                child = cable.spawn_run().unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (success, self.fired.len() - before)
    }

    /// Wait (the socket kept up) until `done`.
    fn settle(&mut self, socket: &mut SocketProcess, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.keep_socket_up(socket);
            if done() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not settled\n{}",
                tail(&socket.log_text(), 150)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The socket's and the cable's books agree, and every credited payment reached the chain.
fn check_books(bitcoind: &Regtest, socket: &SocketProcess, cable: &CableFiles, scheme: &str) {
    let socket_db = socket.data_dir.join("socket.sqlite");
    let cable_db = cable.data_dir.join("cable.sqlite");
    let credited = query_pairs(
        &socket_db,
        &format!(
            "SELECT p.session_id, p.payment_id FROM payments p JOIN sessions s ON s.id = p.session_id
             WHERE s.scheme = '{scheme}' AND p.status != 'failed'
             UNION SELECT l.session_id, l.payment_id FROM ln_payments l
             JOIN sessions s ON s.id = l.session_id WHERE s.scheme = '{scheme}'"
        ),
    );
    let accepted = query_pairs(
        &cable_db,
        "SELECT session_id, payment_id FROM payments WHERE status = 'accepted'
         UNION SELECT session_id, payment_id FROM ln_payments WHERE status = 'paid'",
    );
    // A signature the cable stored counts as committed, whether or not it could store the
    // socket's acceptance afterwards.
    let signed = query_pairs(
        &cable_db,
        "SELECT session_id, payment_id FROM payments WHERE status IN ('accepted', 'signed')
         UNION SELECT session_id, payment_id FROM ln_payments WHERE status = 'paid'",
    );
    // Lightning's toasts may end early (see `every_scheme`).
    let least = if scheme == "lightning" { 1 } else { 5 };
    assert!(credited.len() >= least, "{scheme}: {credited:?}");
    assert!(
        accepted.is_subset(&credited) && credited.is_subset(&signed),
        "{scheme}: the socket credited {credited:?}; the cable holds as accepted {accepted:?} \
         and signed {signed:?}"
    );
    // Nothing failed or lost, no honest cable banned or flagged, no anomaly.
    assert_eq!(
        query_i64(
            &socket_db,
            "SELECT COUNT(*) FROM payments WHERE status IN ('failed', 'lost')"
        ),
        0,
        "{scheme}"
    );
    assert_eq!(
        query_i64(
            &socket_db,
            "SELECT COUNT(*) FROM cables WHERE banned_reason IS NOT NULL OR flagged_reason IS NOT NULL"
        ),
        0,
        "{scheme}"
    );
    assert_eq!(
        query_i64(&socket_db, "SELECT COUNT(*) FROM anomalies"),
        0,
        "{scheme}"
    );
    // No energy beyond what was credited, but for the grace period: the socket keeps the
    // power on for `grace_secs` after a quota is used up, waiting for the next payment (60 s
    // on the outlet clock at the toaster's 1300 W: 21.7 Wh, and the meter's last ticks), and a
    // crash can take that long.
    let beyond = query_pairs(
        &socket_db,
        "SELECT s.id || ' ' || s.end_reason || ': ' || s.energy_used_mwh || ' mWh used, credited '
                || ((SELECT COALESCE(SUM(quota_mwh), 0) FROM payments p
                     WHERE p.session_id = s.id AND p.status != 'failed')
                  + (SELECT COALESCE(SUM(quota_mwh), 0) FROM ln_payments l
                     WHERE l.session_id = s.id)), 0
         FROM sessions s WHERE s.energy_used_mwh > 23000 +
               (SELECT COALESCE(SUM(quota_mwh), 0) FROM payments p
                WHERE p.session_id = s.id AND p.status != 'failed')
             + (SELECT COALESCE(SUM(quota_mwh), 0) FROM ln_payments l WHERE l.session_id = s.id)",
    );
    assert!(
        beyond.is_empty(),
        "{scheme}: energy beyond credit: {beyond:?}\n{}",
        tail(&socket.log_text(), 120)
    );
    // On the chain: each credited on-chain payment, each single-fee set, each spillman close
    // (paying exactly what was credited).
    let txids: Vec<(String, i64)> = match scheme {
        "onchain" => query_pairs(
            &socket_db,
            "SELECT txid, amount_sat FROM payments p JOIN sessions s ON s.id = p.session_id
             WHERE s.scheme = 'onchain'",
        )
        .into_iter()
        .collect(),
        "single-fee" => query_pairs(
            &socket_db,
            "SELECT txid, latest_value_sat FROM single_fee_sets WHERE status = 'broadcast'",
        )
        .into_iter()
        .collect(),
        "spillman" => {
            assert_eq!(
                query_i64(
                    &socket_db,
                    "SELECT COUNT(*) FROM spillman_channels c
                     WHERE (c.status = 'closed') != (c.highest_total_sat > 0)
                     OR c.highest_total_sat != (SELECT COALESCE(SUM(amount_sat), 0)
                        FROM payments p WHERE p.session_id = c.session_id)"
                ),
                0,
                "spillman: every channel with a payment closed with what was credited, the others \
                 unpaid"
            );
            query_pairs(
                &socket_db,
                "SELECT close_txid, highest_total_sat FROM spillman_channels
                 WHERE status = 'closed'",
            )
            .into_iter()
            .collect()
        }
        _ => Vec::new(),
    };
    bitcoind.mine(1).unwrap();
    for (txid, value_sat) in txids {
        let tx: Value = regtest::rpc(
            bitcoind.client(),
            "getrawtransaction",
            &[json!(txid), json!(1)],
        )
        .unwrap();
        assert!(
            tx["confirmations"].as_u64().unwrap_or(0) >= 1,
            "{scheme}: {tx}"
        );
        let outputs: Vec<i64> = tx["vout"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                Amount::from_btc(o["value"].as_f64().unwrap())
                    .unwrap()
                    .to_sat() as i64
            })
            .collect();
        assert!(outputs.contains(&value_sat), "{scheme}: {tx}");
    }
}

/// Each of `schemes` with a cable of its own (funded), toasting until a whole toast fires no
/// new point (at most 4), every session settled by the socket; then the books checked.
fn every_scheme(
    bitcoind: &Regtest,
    dir: &Path,
    socket: &mut SocketProcess,
    crashes: &mut Crashes,
    schemes: &[&'static str],
) -> BTreeMap<&'static str, CableFiles> {
    let mut cable_of = BTreeMap::new();
    for &scheme in schemes {
        let mut cable = CableFiles::create(
            bitcoind,
            &dir.join(scheme),
            &socket.endpoint,
            &CableSetup {
                schemes: vec![scheme.into()],
                max_session_sat: 10_000,
                ..CableSetup::default()
            },
            Amount::from_sat(100_000),
        )
        .unwrap();
        // Lightning: blocks for its channel (and a new one, should a crash have closed it).
        let miner = (scheme == "lightning").then(|| {
            cable
                .fund_lightning(bitcoind, Amount::from_sat(300_000))
                .unwrap();
            Miner::start(bitcoind, Duration::from_millis(500))
        });
        for toast in 1..=4 {
            let (success, fired) = crashes.run_through(socket, &mut cable);
            eprintln!("{scheme}: toast {toast} fired {fired} points");
            // The socket settles each session: ended, its set or channel closed, confirmed.
            let socket_db = socket.data_dir.join("socket.sqlite");
            crashes.settle(socket, scheme, || {
                query_i64(
                    &socket_db,
                    "SELECT COUNT(*) FROM sessions WHERE ended_at_unix_ms IS NULL",
                ) == 0
                    && query_i64(
                        &socket_db,
                        "SELECT COUNT(*) FROM spillman_channels
                         WHERE status NOT IN ('closed', 'unpaid')",
                    ) == 0
                    && query_i64(
                        &socket_db,
                        "SELECT COUNT(*) FROM single_fee_sets WHERE status = 'open'",
                    ) == 0
            });
            bitcoind.mine(1).unwrap();
            // A close or set sent after that block confirms in a later one: a block every 2 s.
            let mut mined = Instant::now();
            crashes.settle(socket, scheme, || {
                if mined.elapsed() > Duration::from_secs(2) {
                    bitcoind.mine(1).unwrap();
                    mined = Instant::now();
                }
                query_i64(
                    &socket_db,
                    "SELECT COUNT(*) FROM single_fee_sets
                     WHERE status = 'broadcast' AND confirmed_height IS NULL",
                ) == 0
                    && query_i64(
                        &socket_db,
                        "SELECT COUNT(*) FROM spillman_channels
                         WHERE status = 'closed' AND close_confirmed_height IS NULL",
                    ) == 0
            });
            // A lockout keeps the outlet locked for `lockout_secs`: the next toast starts once
            // it is over. (An honest one: at this test's x20 clock the 60 s grace period is 3 s,
            // less than a cable takes to restart with its Lightning node.)
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                crashes.keep_socket_up(socket);
                let status = socket.status();
                if status.is_ok_and(|s| s.state != OutletState::Lockout as i32) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{scheme}: the outlet stays locked out"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            if fired == 0 {
                // A toast with nothing armed left to fire goes through. Not asked of
                // Lightning: at this test's two blocks a second, an HTLC cut short by a crash
                // expires within the toast and its channel is closed, and the cable may be
                // opening a new one when the toast is over; its books are checked all the same.
                assert!(
                    success || scheme == "lightning",
                    "{scheme}: {}\nsocket:\n{}",
                    tail(&std::fs::read_to_string(&cable.log).unwrap_or_default(), 40),
                    tail(&socket.log_text(), 150)
                );
                break;
            }
        }
        drop(miner);
        check_books(bitcoind, socket, &cable, scheme);
        cable_of.insert(scheme, cable);
    }
    cable_of
}

/// Run `socket-node <args>` with `env`; its success and output.
fn socket_cli(args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let out = Command::new(binary("socket-node").unwrap())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_crash_at_every_persistence_point_loses_nothing() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut crashes = Crashes::new(Fault::Crash);
    let total = crashes.socket_left.len() + crashes.cable_left.len();

    // An operator whose signed registry the socket takes.
    let operator_dir = dir.path().join("operator");
    let (ok, operator_key) = socket_cli(
        &["identity", "--data-dir", operator_dir.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{operator_key}");
    let operator_key = operator_key.trim().to_owned();
    let setup = SocketSetup {
        lightning: true,
        spillman: true,
        link_debounce_ms: 5_000,
        top_toml: format!("anchor_interval_secs = 1\nregistry_operator_keys = [{operator_key:?}]"),
        ..SocketSetup::default()
    };
    let mut socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    crashes.restart_socket(&mut socket);

    // Each scheme with a cable of its own, toasting until a whole toast fires no new point.
    let mut cable_of = every_scheme(
        &bitcoind,
        dir.path(),
        &mut socket,
        &mut crashes,
        &["onchain", "single-fee", "spillman", "lightning"],
    );

    // The owner's commands. A profile (written by the CLI), crashed right after its write.
    let socket_db = socket.data_dir.join("socket.sqlite");
    let key = {
        let db = rusqlite::Connection::open(&socket_db).unwrap();
        db.query_row(
            "SELECT cable_key_hex FROM sessions s JOIN payments p ON p.session_id = s.id
             WHERE s.scheme = 'onchain' LIMIT 1",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
    };
    let data_dir = socket.data_dir.to_str().unwrap().to_owned();
    let (ok, out) = socket_cli(
        &[
            "profile",
            &key,
            "--max-power-w",
            "500",
            "--data-dir",
            &data_dir,
        ],
        &crashes.fault.armed(&crashes.socket_left),
    );
    assert!(!ok, "{out}");
    crashes.note(&out);
    assert_eq!(
        query_i64(
            &socket_db,
            &format!("SELECT profile_max_power_w FROM cables WHERE key_hex = '{key}'")
        ),
        500,
        "the profile outlives the crash"
    );
    // The onchain cable (1300 W) is halted by the rule: the anomaly, recorded once.
    let mut onchain = cable_of.remove("onchain").unwrap();
    crashes.run_through(&mut socket, &mut onchain);
    crashes.settle(&mut socket, "the halted session", || {
        query_i64(
            &socket_db,
            "SELECT COUNT(*) FROM sessions WHERE ended_at_unix_ms IS NULL",
        ) == 0
    });
    assert_eq!(
        query_i64(
            &socket_db,
            "SELECT COUNT(*) FROM anomalies WHERE rule = 'power-above-profile'"
        ),
        1,
        "{}",
        socket.log_text()
    );

    // An operator's registry taken in: crashed right after the import.
    let registry = dir.path().join("registry.json");
    let (ok, out) = socket_cli(
        &[
            "registry",
            "export",
            "--operator-dir",
            operator_dir.to_str().unwrap(),
            "--data-dir",
            &data_dir,
            "--out",
            registry.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = socket_cli(
        &[
            "registry",
            "import",
            registry.to_str().unwrap(),
            "--config",
            socket.config.to_str().unwrap(),
            "--data-dir",
            &data_dir,
        ],
        &crashes.fault.armed(&crashes.socket_left),
    );
    assert!(!ok, "{out}");
    crashes.note(&out);
    // A revocation through the running socket: it crashes right after storing it.
    let revoked = socket.operator_cli("revoke", &[&key, "--reason", "stolen"]);
    // The CLI sees the connection drop a moment before the process is gone: wait for it.
    assert!(
        socket.wait_for_exit(Duration::from_secs(30)),
        "the socket survived the revocation: {revoked:?}"
    );
    assert!(crashes.keep_socket_up(&mut socket), "{revoked:?}");
    assert_eq!(
        query_i64(
            &socket_db,
            &format!(
                "SELECT COUNT(*) FROM cables WHERE key_hex = '{key}' AND banned_reason IS NOT NULL"
            )
        ),
        1,
        "the revocation outlives the crash"
    );

    // The cable's registry of sockets: a socket whose meter over-counts 10 % is flagged by a
    // cable metering the same toaster, which crashes right after flagging it; its owner
    // allows the socket again.
    let over_counting = SocketProcess::start(
        &bitcoind,
        &dir.path().join("over-counting"),
        &SocketSetup {
            time_scale: 5.0,
            load_toml: "kind = \"constant\"\npower_w = 1000.0".into(),
            quota_low_mwh: 3_000,
            hw_toml: "meter_error_percent = 10".into(),
            ..SocketSetup::default()
        },
    )
    .unwrap();
    let mut metering = CableFiles::create(
        &bitcoind,
        &dir.path().join("metering"),
        &over_counting.endpoint,
        &CableSetup {
            max_session_sat: 10_000,
            hw_toml: "kind = \"sim\"\ntime_scale = 5.0\n\
                      load = { kind = \"constant\", power_w = 1000.0 }"
                .into(),
            ..CableSetup::default()
        },
        Amount::from_sat(100_000),
    )
    .unwrap();
    let mut other = over_counting;
    crashes.run_through(&mut other, &mut metering);
    let flagged = query_i64(
        &metering.data_dir.join("cable.sqlite"),
        "SELECT COUNT(*) FROM sockets WHERE status = 'flagged'",
    );
    assert_eq!(flagged, 1, "the flag outlives the crash");
    let socket_key = {
        let db = rusqlite::Connection::open(metering.data_dir.join("cable.sqlite")).unwrap();
        db.query_row("SELECT identity_key FROM sockets", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
    };
    let out = Command::new(binary("cable-node").unwrap())
        .envs(crashes.fault.armed(&crashes.cable_left))
        .arg("--config")
        .arg(&metering.config)
        .arg("--data-dir")
        .arg(&metering.data_dir)
        .args(["sockets", "--allow", &socket_key])
        .output()
        .unwrap();
    assert!(!out.status.success());
    crashes.note(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        query_i64(
            &metering.data_dir.join("cable.sqlite"),
            "SELECT COUNT(*) FROM sockets WHERE status = 'flagged'"
        ),
        0,
        "allowed again"
    );

    let elsewhere: BTreeSet<String> = ELSEWHERE.iter().map(|(p, _)| p.to_string()).collect();
    let left: Vec<&String> = crashes
        .socket_left
        .iter()
        .chain(&crashes.cable_left)
        .filter(|p| !elsewhere.contains(*p))
        .collect();
    eprintln!(
        "crashed at {} of {total} persistence points here, {} in other tests",
        crashes.fired.len(),
        elsewhere.len()
    );
    assert!(left.is_empty(), "never reached: {left:?}");
}

/// Every write of both stores fails once (`<point>-fails`, an injected `SQLITE_IOERR`) while
/// the cable of each on-chain scheme toasts: nothing is credited or granted on a failed write
/// (the books agree as in the crash test), the request that met it fails with a reason that
/// names it, and the nodes go on once the store works again: the socket without a restart,
/// the cable on its next run (the toast completes).
#[test]
fn a_failed_store_write_grants_nothing_and_the_nodes_recover() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Crashes::new(Fault::StoreFailure);
    // Time for the retries (60 s real at the setup's x20): this is no test of the timeouts.
    let setup = SocketSetup {
        spillman: true,
        link_debounce_ms: 5_000,
        payment_timeout_secs: 1_200,
        grace_secs: 1_200,
        ..SocketSetup::default()
    };
    let mut socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    failures.restart_socket(&mut socket);
    every_scheme(
        &bitcoind,
        dir.path(),
        &mut socket,
        &mut failures,
        &["onchain", "single-fee", "spillman"],
    );
    assert!(
        socket.is_running(),
        "the socket went on through its store failures"
    );
    eprintln!(
        "{} store failures injected: {:?}",
        failures.fired.len(),
        failures.fired
    );
    // The requests' writes among them: payments, sets, channels, on both sides.
    for point in [
        "socket-open-session",
        "socket-accept-payment",
        "socket-hold-single-fee",
        "socket-fund-channel",
        "socket-hold-channel-payment",
        "cable-record-signed",
        "cable-open-set",
        "cable-refund-signed",
    ] {
        assert!(failures.fired.contains(point), "{point} never failed");
    }
}
