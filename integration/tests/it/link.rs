//! A real link between two hosts (issue 14): socket-node and cable-node each in a network
//! namespace of its own, joined by a veth pair that `tc netem` gives a power-line link's delay
//! and loss (a kernel without netem: a 256 kbit/s token bucket and nftables dropping frames at
//! random, see [`Link::shape`]); bitcoind stays on this host, reached by each namespace over a
//! veth of its own.
//!
//! For each scheme (Lightning: the cable's channel opened, and every payment made, over the
//! link): a toast over the lossy link; the link flapped mid-session (down for a few seconds,
//! shorter than the socket's link debounce: the session goes on); the link partitioned for
//! longer than the debounce (the socket ends the session; the cable finds it ended and goes on
//! in a new one). Every toast ends, and the socket's credits and the cable's payments agree:
//! nothing paid twice, nothing credited without a payment.
//!
//! Needs root, iproute2 and nftables (CI runs as root; `.ci/install` installs them): a machine
//! where the namespaces cannot be made fails the test, saying so.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use bitcoin::Amount;
use integration::{query_pairs, CableFiles, CableSetup, Host, Miner, SocketProcess, SocketSetup};
use regtest::Regtest;

/// Run `ip` (or `tc`) with `args`; panics with its error.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{program} {args:?}: {e}: the link tests need iproute2 and nftables \
                 (apt install iproute2 nftables)"
            )
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\nthe link tests need root and network namespaces",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair (the power-line link), each with a veth to this host
/// (for bitcoind, and for the test to reach the socket). Deleted when dropped.
struct Link {
    socket_ns: String,
    cable_ns: String,
    /// The socket's end of the link, in `socket_ns`.
    socket_dev: String,
    tag: String,
}

const SOCKET_LINK_IP: &str = "10.77.0.1";
const CABLE_LINK_IP: &str = "10.77.0.2";

impl Link {
    fn new() -> Link {
        // The host's ends have fixed addresses (10.78.<n>.1): namespaces a killed run left
        // behind would hold them too and take this run's traffic. One link at a time.
        let listed = Command::new("ip").args(["netns", "list"]).output();
        for line in listed
            .map(|o| o.stdout)
            .unwrap_or_default()
            .split(|b| *b == b'\n')
        {
            let name = String::from_utf8_lossy(line);
            let name = name.split_whitespace().next().unwrap_or_default();
            if name.starts_with("t2ts") || name.starts_with("t2tc") {
                eprintln!("removing the namespace {name} a killed run left behind");
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
        let tag = format!("{}", std::process::id() % 100_000);
        let link = Link {
            socket_ns: format!("t2ts{tag}"),
            cable_ns: format!("t2tc{tag}"),
            socket_dev: format!("ls{tag}"),
            tag: tag.clone(),
        };
        let (s, c) = (link.socket_ns.as_str(), link.cable_ns.as_str());
        run("ip", &["netns", "add", s]);
        run("ip", &["netns", "add", c]);
        let cable_dev = format!("lc{tag}");
        run(
            "ip",
            &[
                "link",
                "add",
                &link.socket_dev,
                "type",
                "veth",
                "peer",
                "name",
                &cable_dev,
            ],
        );
        run("ip", &["link", "set", &link.socket_dev, "netns", s]);
        run("ip", &["link", "set", &cable_dev, "netns", c]);
        for (ns, dev, ip) in [
            (s, link.socket_dev.as_str(), SOCKET_LINK_IP),
            (c, cable_dev.as_str(), CABLE_LINK_IP),
        ] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev],
            );
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        // Each namespace's way to this host: 10.78.<n>.1 here, 10.78.<n>.2 there.
        for (n, ns) in [(1, s), (2, c)] {
            let (here, there) = (format!("h{n}{tag}"), format!("n{n}{tag}"));
            run(
                "ip",
                &["link", "add", &here, "type", "veth", "peer", "name", &there],
            );
            run("ip", &["link", "set", &there, "netns", ns]);
            run(
                "ip",
                &["addr", "add", &format!("10.78.{n}.1/24"), "dev", &here],
            );
            run("ip", &["link", "set", &here, "up"]);
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("10.78.{n}.2/24"),
                    "dev",
                    &there,
                ],
            );
            run("ip", &["-n", ns, "link", "set", &there, "up"]);
        }
        link
    }

    /// Shape both ends of the link as a power-line link: `tc netem` delay (`delay_ms`, ± a
    /// quarter) and `loss_percent` loss. A kernel without netem (no `sch_netem`, as on this
    /// project's CI machine) gets a 256 kbit/s token bucket instead, a narrowband power-line
    /// link's rate, whose queue delays what the nodes send, and the loss from nftables: each
    /// end drops `loss_percent` of the frames it receives at random (a `netdev` ingress rule,
    /// `numgen random`), before any protocol sees them, as a lossy wire would. Returns what was
    /// applied.
    fn shape(&self, delay_ms: u32, loss_percent: f32) -> String {
        let ends = [
            (self.socket_ns.clone(), self.socket_dev.clone()),
            (self.cable_ns.clone(), format!("lc{}", self.tag)),
        ];
        let netem = |ns: &str, dev: &str| {
            Command::new("tc")
                .args([
                    "-n", ns, "qdisc", "replace", "dev", dev, "root", "netem", "delay",
                ])
                .arg(format!("{delay_ms}ms"))
                .arg(format!("{}ms", delay_ms / 4))
                .arg("loss")
                .arg(format!("{loss_percent}%"))
                .output()
                .expect("tc (iproute2)")
        };
        let tried = netem(&ends[0].0, &ends[0].1);
        if tried.status.success() {
            assert!(netem(&ends[1].0, &ends[1].1).status.success());
            return format!("netem delay {delay_ms} ms, loss {loss_percent} %");
        }
        let why = String::from_utf8_lossy(&tried.stderr).trim().to_owned();
        let per_mille = (loss_percent * 10.0).round() as u32;
        for (ns, dev) in &ends {
            // The bucket holds a few full frames: a frame larger than the bucket never passes
            // (a Lightning `update_add_htlc` alone carries a 1366-byte onion).
            run(
                "tc",
                &[
                    "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", "256kbit",
                    "burst", "4kb", "latency", "400ms",
                ],
            );
            let nft = |command: &str| run("ip", &["netns", "exec", ns, "nft", command]);
            nft("add table netdev t2t_link");
            nft(&format!(
                "add chain netdev t2t_link loss {{ type filter hook ingress device \"{dev}\" priority 0; }}"
            ));
            nft(&format!(
                "add rule netdev t2t_link loss numgen random mod 1000 < {per_mille} counter drop"
            ));
        }
        format!(
            "no netem in this kernel ({why}): a 256 kbit/s token bucket, and nftables dropping \
             {loss_percent} % of the frames each end receives"
        )
    }

    /// Frames the loss rules dropped so far, both ends (0 where netem does the loss).
    fn frames_dropped(&self) -> u64 {
        let mut dropped = 0;
        for ns in [&self.socket_ns, &self.cable_ns] {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", ns, "nft", "list", "table", "netdev", "t2t_link",
                ])
                .output()
                .expect("ip netns exec nft");
            let listing = String::from_utf8_lossy(&out.stdout);
            dropped += listing
                .split_whitespace()
                .skip_while(|word| *word != "packets")
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        dropped
    }

    /// The link down (both ends lose carrier) or up again.
    fn set_up(&self, up: bool) {
        run(
            "ip",
            &[
                "-n",
                &self.socket_ns,
                "link",
                "set",
                &self.socket_dev,
                if up { "up" } else { "down" },
            ],
        );
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.socket_ns, &self.cable_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // Deleting a namespace deletes the veths in it and their peers here: these are gone
        // already unless the namespace was never made.
        for n in [1, 2] {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("h{n}{}", self.tag)])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Forward `listen` (on this host, for a namespace) to bitcoind's RPC port on loopback, for the
/// life of the test.
fn forward(listen: &str, to: u16) {
    let listener = TcpListener::bind(listen).unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buffer) {
                        if n == 0 || into.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

#[test]
fn sessions_survive_a_lossy_flapping_and_partitioned_link() {
    let link = Link::new();
    let bitcoind = Regtest::start().unwrap();
    let rpc_port: u16 = bitcoind
        .rpc_url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    forward(&format!("10.78.1.1:{rpc_port}"), rpc_port);
    forward(&format!("10.78.2.1:{rpc_port}"), rpc_port);
    let dir = tempfile::tempdir().unwrap();
    // The link debounce (5 s) outlasts a flap (2 s) and not a partition (12 s). The grace
    // period for a payment, 600 s on the outlet clock (30 s real at the setup's x20), outlasts
    // both, as a minute of real time outlasts a power-line link's usual drops.
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            spillman: true,
            lightning: true,
            // Cables open their channels, and pay, over the link.
            lightning_ip: Some(SOCKET_LINK_IP.into()),
            link_debounce_ms: 5_000,
            grace_secs: 600,
            payment_timeout_secs: 1_200,
            host: Some(Host {
                netns: link.socket_ns.clone(),
                ip: "10.78.1.2".into(),
                rpc_url: format!("http://10.78.1.1:{rpc_port}"),
            }),
            ..SocketSetup::default()
        },
    )
    .unwrap();
    let endpoint = format!("http://{SOCKET_LINK_IP}:{}", socket.port());
    let shaped = link.shape(20, 2.0);
    eprintln!("the link: {shaped}");

    for scheme in ["onchain", "single-fee", "spillman", "lightning"] {
        let cable = CableFiles::create(
            &bitcoind,
            &dir.path().join(scheme),
            &endpoint,
            &CableSetup {
                schemes: vec![scheme.into()],
                max_session_sat: 20_000,
                host: Some(Host {
                    netns: link.cable_ns.clone(),
                    ip: CABLE_LINK_IP.into(),
                    rpc_url: format!("http://10.78.2.1:{rpc_port}"),
                }),
                ..CableSetup::default()
            },
            Amount::from_sat(200_000),
        )
        .unwrap();
        // Lightning: a channel of the cable's to open (over the link) and confirm.
        let _miner = (scheme == "lightning").then(|| {
            cable
                .fund_lightning(&bitcoind, Amount::from_sat(300_000))
                .unwrap();
            Miner::start(&bitcoind, Duration::from_millis(500))
        });
        // no fault but the lossy link; a flap; a partition.
        for (fault, down) in [("lossy", None), ("flap", Some(2)), ("partition", Some(12))] {
            let mut child = cable.spawn_run().unwrap();
            let started = Instant::now();
            if let Some(down_secs) = down {
                // Mid-toast: after the first payment.
                std::thread::sleep(Duration::from_secs(3));
                link.set_up(false);
                std::thread::sleep(Duration::from_secs(down_secs));
                link.set_up(true);
            }
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if started.elapsed() > Duration::from_secs(180) {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&cable.log).unwrap_or_default();
                    let socket_log = socket.log_text();
                    let tail: Vec<&str> = socket_log.lines().rev().take(80).collect();
                    panic!(
                        "{scheme}, {fault}: the toast does not end\ncable:\n{log}\nsocket:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let log = std::fs::read_to_string(&cable.log).unwrap_or_default();
            assert!(
                status.success(),
                "{scheme}, {fault}: {log}\nsocket:\n{}",
                socket.log_text()
            );
            eprintln!(
                "{scheme}, {fault}: {}",
                log.lines().last().unwrap_or_default()
            );
        }
        // Every payment the socket credited is one the cable signed, and every one the cable
        // holds as accepted was credited.
        // Lightning: every payment the socket received is one the cable sent, and every one
        // the cable knows as paid (it has the preimage) the socket received.
        let socket_db = socket.data_dir.join("socket.sqlite");
        let cable_db = cable.data_dir.join("cable.sqlite");
        let (credited, accepted, signed) = if scheme == "lightning" {
            (
                query_pairs(&socket_db, "SELECT session_id, payment_id FROM ln_payments"),
                query_pairs(
                    &cable_db,
                    "SELECT session_id, payment_id FROM ln_payments WHERE status = 'paid'",
                ),
                query_pairs(
                    &cable_db,
                    "SELECT session_id, payment_id FROM ln_payments WHERE status IN ('paid', 'sending')",
                ),
            )
        } else {
            (
                query_pairs(
                    &socket_db,
                    &format!(
                        "SELECT p.session_id, p.payment_id FROM payments p
                         JOIN sessions s ON s.id = p.session_id
                         WHERE s.scheme = '{scheme}' AND p.status != 'failed'"
                    ),
                ),
                query_pairs(
                    &cable_db,
                    "SELECT session_id, payment_id FROM payments WHERE status = 'accepted'",
                ),
                query_pairs(
                    &cable_db,
                    "SELECT session_id, payment_id FROM payments WHERE status IN ('accepted', 'signed')",
                ),
            )
        };
        assert!(credited.len() >= 9, "{scheme}: {credited:?}");
        assert!(
            accepted.is_subset(&credited) && credited.is_subset(&signed),
            "{scheme}: credited {credited:?}, accepted {accepted:?}, signed {signed:?}"
        );
        let db = rusqlite::Connection::open(&socket_db).unwrap();
        let (failed, banned): (i64, i64) = db
            .query_row(
                "SELECT (SELECT COUNT(*) FROM payments WHERE status IN ('failed', 'lost')),
                        (SELECT COUNT(*) FROM cables WHERE banned_reason IS NOT NULL)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (failed, banned),
            (0, 0),
            "{scheme}: the socket's audit log {:?}\nsocket:\n{}",
            {
                let mut audit = db
                    .prepare("SELECT event || ': ' || detail FROM audit")
                    .unwrap();
                let rows = audit.query_map([], |r| r.get::<_, String>(0)).unwrap();
                rows.map(Result::unwrap).collect::<Vec<_>>()
            },
            socket.log_text()
        );
    }
    if shaped.contains("nftables") {
        let dropped = link.frames_dropped();
        eprintln!("the link lost {dropped} frames");
        assert!(
            dropped > 0,
            "the loss rules dropped nothing: the link was not lossy"
        );
    }
}
