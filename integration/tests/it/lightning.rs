//! Lightning (design.md `lightning`; BOLT 2/11 via ldk-node) end to end on a real regtest chain:
//! the first visit opens a channel and pays each quota as an invoice; the next session reuses
//! the channel with no on-chain transaction at all; a cable that never pays gets nothing.

use std::time::{Duration, Instant};

use bitcoin::Amount;
use integration::{CableFiles, CableSetup, Miner, SocketProcess, SocketSetup, OUTLET};
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, OutletState};
use regtest::Regtest;
use serde_json::{json, Value};

fn lightning_setup() -> SocketSetup {
    SocketSetup {
        lightning: true,
        ..SocketSetup::default()
    }
}

fn lightning_cable() -> CableSetup {
    CableSetup {
        schemes: vec!["lightning".into()],
        ..CableSetup::default()
    }
}

fn wait_for_standby(socket: &SocketProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket.status().map_or(true, |s| !s.session_hash.is_empty()) {
        assert!(Instant::now() < deadline, "the outlet stayed busy");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Lightning cable of `socket` with a session budget of `max_session_sat`, its Lightning
/// wallet funded for a channel.
fn funded_cable(
    bitcoind: &Regtest,
    dir: &std::path::Path,
    socket: &SocketProcess,
    max_session_sat: u64,
) -> CableFiles {
    let setup = CableSetup {
        max_session_sat,
        ..lightning_cable()
    };
    funded_cable_of(bitcoind, dir, socket, &setup)
}

/// A cable of `setup` for `socket` (10 000 sat on chain), its Lightning wallet funded with
/// 300 000 sat for a channel.
fn funded_cable_of(
    bitcoind: &Regtest,
    dir: &std::path::Path,
    socket: &SocketProcess,
    setup: &CableSetup,
) -> CableFiles {
    let cable = CableFiles::create(
        bitcoind,
        &dir.join("cable"),
        &socket.endpoint,
        setup,
        Amount::from_sat(10_000),
    )
    .unwrap();
    cable
        .fund_lightning(bitcoind, Amount::from_sat(300_000))
        .unwrap();
    cable
}

/// The session in progress once the socket has credited `payments` in it (within 120 s).
fn session_after(socket: &SocketProcess, payments: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = socket.status().unwrap();
        if status.payments >= payments {
            return socket
                .session_of(&status)
                .unwrap()
                .expect("a session in progress");
        }
        assert!(
            Instant::now() < deadline,
            "no payment {payments}:\n{}",
            socket.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (120 s at most) until the cable's own books show `paid` invoices of `session` paid.
fn wait_for_cable_paid(cable: &CableFiles, session: &str, paid: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let db = cable.data_dir.join("cable.sqlite");
    loop {
        let booked: i64 = rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM ln_payments WHERE session_id = ?1 AND status = 'paid'",
                    [session],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0);
        if booked >= paid {
            return;
        }
        assert!(Instant::now() < deadline, "the cable booked {booked} paid");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cable-node run` to its end (generous, 300 s: under a loaded CI both Lightning nodes first
/// reestablish their channel); its log, asserting it succeeded.
fn run_to_end(cable: &CableFiles, socket: &SocketProcess) -> String {
    let mut child = cable.spawn_run().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "the cable never finished:\n{}\nsocket:\n{}",
                std::fs::read_to_string(&cable.log).unwrap_or_default(),
                socket.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&cable.log).unwrap();
    assert!(status.success(), "{log}\n{}", socket.log_text());
    log
}

#[test]
fn the_first_visit_opens_a_channel_and_the_next_session_needs_no_chain() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket =
        SocketProcess::start(&bitcoind, &dir.path().join("socket"), &lightning_setup()).unwrap();
    let cable = funded_cable_of(&bitcoind, dir.path(), &socket, &lightning_cable());

    // A policy that allows the cable no channel: it opens none, and locks no coin.
    let config = std::fs::read_to_string(&cable.config).unwrap();
    std::fs::write(
        &cable.config,
        format!("{config}\n[lightning]\nmax_channels = 0\n"),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("max_channels"), "{log}");
    let mempool: Vec<String> = regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap();
    assert!(mempool.is_empty(), "{mempool:?}");
    std::fs::write(&cable.config, config).unwrap();

    // First visit: the channel is opened and confirmed, then the toast is paid over it.
    let miner = Miner::start(&bitcoind, Duration::from_millis(500));
    let out = cable.run(Duration::from_secs(180)).unwrap();
    drop(miner);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );
    let first = cable.session_report().unwrap();
    assert_eq!(first.outcome, "appliance done", "{first:?}");
    let payments = &first.payments;
    assert_eq!(payments.len(), 5, "{first:?}");
    assert!(
        payments
            .iter()
            .all(|p| p.amount_sat == 1_000 && p.latency_ms.is_some()),
        "{first:?}"
    );
    let onchain = &first.onchain_txs;
    assert_eq!(onchain.len(), 1, "the channel open: {first:?}");
    let funding: Value = regtest::rpc(
        bitcoind.client(),
        "getrawtransaction",
        &[json!(onchain[0].txid), json!(1)],
    )
    .unwrap();
    assert!(funding["confirmations"].as_u64().unwrap() >= 1);

    // The socket credited exactly the five invoices it issued, each once.
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let (received, msat): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), SUM(amount_msat) FROM ln_payments",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((received, msat), (5, 5_000_000));
    // The first quota by invoice (it opens the session), the others by keysend.
    let keysends: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM ln_payments WHERE kind = 'keysend'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keysends, 4);

    // Second session on the same channel: nothing touches the chain.
    wait_for_standby(&socket);
    let height: u64 = regtest::rpc(bitcoind.client(), "getblockcount", &[]).unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );
    let second = cable.session_report().unwrap();
    assert_eq!(second.payments.len(), 5, "{second:?}");
    assert_eq!(second.onchain_txs.len(), 0, "{second:?}");
    let mempool: Vec<String> = regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap();
    assert!(mempool.is_empty(), "{mempool:?}");
    let after: u64 = regtest::rpc(bitcoind.client(), "getblockcount", &[]).unwrap();
    assert_eq!(after, height);
    let received: i64 = db
        .query_row("SELECT COUNT(*) FROM ln_payments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(received, 10);

    // The owners: the socket lists the channel through its operator API, holding the ten
    // quotas (10 000 sat, of which it can send all but the 1 % channel reserve, BOLT 2); the
    // cable closes it cooperatively and gets the rest back on chain.
    let listed = socket.operator_cli("channels", &[]).unwrap();
    assert!(
        listed.contains("capacity 100000 sat") && listed.contains("can send 9000000 msat"),
        "{listed}"
    );
    let closed = cable.cli(&["close-channel"]).unwrap();
    assert!(closed.contains("closed cooperatively"), "{closed}");
    bitcoind.mine(1).unwrap();
    integration::wait_until("the socket sees the close", Duration::from_secs(30), || {
        socket
            .operator_cli("channels", &[])
            .is_ok_and(|l| l.contains("no channels"))
    });
    let wallet = cable.cli(&["channels"]).unwrap();
    let spendable: u64 = wallet
        .lines()
        .find_map(|l| l.strip_prefix("Lightning wallet on chain: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{wallet}"));
    // 300 000 funded, 10 000 paid to the socket, the rest less two transactions' fees.
    assert!((285_000..290_000).contains(&spendable), "{wallet}");
}

#[test]
fn a_cable_that_never_pays_its_invoice_gets_nothing_and_is_locked_out() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        time_scale: 1.0,
        payment_timeout_secs: 2,
        ..lightning_setup()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let to = socket.recipient();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = SocketClient::connect(socket.endpoint.clone())
            .await
            .unwrap();
        let _link = client
            .watch_status(integration::cable_signer().sign(
                &to,
                v1::WatchStatusRequest {
                    outlet_id: OUTLET.into(),
                    auth: None,
                },
            ))
            .await
            .unwrap();
        let terms = client
            .power_request(integration::cable_signer().sign(
                &to,
                v1::PowerRequestRequest {
                    outlet_id: OUTLET.into(),
                    scheme: v1::Scheme::Lightning as i32,
                    session_id: String::new(),
                    max_amount_sat: 0,
                    auth: None,
                    receipt: None,
                    offer_payout_script: Vec::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            proto::terms::lightning_terms(&terms)
                .unwrap()
                .bolt11_invoice
                .starts_with("lnbcrt"),
            "{terms:?}"
        );
        assert_eq!(terms.amount_msat, 1_000_000);
        // An on-chain "payment" of a Lightning quota is refused without credit.
        let refused = client
            .pay_transaction(integration::cable_signer().sign(
                &to,
                v1::PayTransactionRequest {
                    session_id: terms.session_id.clone(),
                    payment_id: terms.payment_id,
                    psbt: vec![],
                    auth: None,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let status = client
                .get_status(v1::GetStatusRequest {
                    outlet_id: OUTLET.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(
                !status.relay_closed,
                "the relay closed for an unpaid invoice"
            );
            if status.state == OutletState::Lockout as i32 || Instant::now() > deadline {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status.state, OutletState::Lockout as i32, "{status:?}");
        assert!(status.reason.contains("no payment"), "{}", status.reason);
    });
}

#[test]
fn a_cable_whose_socket_is_gone_force_closes_and_gets_its_funds_back_on_chain() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut socket =
        SocketProcess::start(&bitcoind, &dir.path().join("socket"), &lightning_setup()).unwrap();
    let cable = funded_cable_of(&bitcoind, dir.path(), &socket, &lightning_cable());
    let miner = Miner::start(&bitcoind, Duration::from_millis(500));
    let out = cable.run(Duration::from_secs(180)).unwrap();
    drop(miner);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The socket is gone for good; the cable closes on its own.
    socket.kill();
    let said = cable.cli(&["close-channel", "--force"]).unwrap();
    assert!(said.contains("force-closed"), "{said}");

    // Its own funds are locked for the to_self_delay (144 blocks), then swept to its wallet.
    let keys =
        wallet::keys::NodeKeys::load_or_create(&cable.data_dir, bitcoin::Network::Regtest).unwrap();
    let chain = wallet::chain::ChainConfig {
        rpc_url: bitcoind.rpc_url(),
        cookie_file: bitcoind.cookie_file().to_owned(),
    };
    let node = ln::start_node(&cable.data_dir, &keys, &chain, &ln::LnSettings::default()).unwrap();
    node.sync_wallets().unwrap();
    let before = node.list_balances().spendable_onchain_balance_sats;
    bitcoind.mine(150).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        node.sync_wallets().unwrap();
        let balance = node.list_balances().spendable_onchain_balance_sats;
        if balance > before + 90_000 || Instant::now() > deadline {
            break balance;
        }
        bitcoind.mine(1).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    };
    // 100 000 sat in the channel, 5 000 paid to the socket, the rest (less fees) back.
    assert!(after > before + 90_000, "before {before}, after {after}");
    assert!(node.list_channels().is_empty());
    node.stop().unwrap();
}

#[test]
fn both_nodes_killed_mid_session_carry_on_and_nothing_is_paid_twice() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 400 W: a quota of 8 Wh lasts 3.6 s at the setup's x20 clock, time for both nodes to
    // finish a payment before the cut.
    let setup = SocketSetup {
        load_toml: "kind = \"constant\"\npower_w = 400.0".into(),
        link_debounce_ms: 10_000,
        ..lightning_setup()
    };
    let mut socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let cable = funded_cable(&bitcoind, dir.path(), &socket, 6_000);
    let miner = Miner::start(&bitcoind, Duration::from_millis(500));
    let mut child = cable.spawn_run().unwrap();
    let session = session_after(&socket, 2);
    drop(miner);

    // A power cut takes both down at once, between two payments. Not within one: ldk-node
    // writes a ChannelMonitor before the ChannelManager that follows it, and a node cut in
    // between force-closes the channel on its return (`OutdatedChannelManager`, LDK's rule for
    // a stale manager; docs/threat-model.md). So the cut waits for the cable's books to show
    // the second invoice paid, then for the commitment dance and both managers' writes to end.
    wait_for_cable_paid(&cable, &session, 2);
    std::thread::sleep(Duration::from_millis(1_000));
    child.kill().unwrap();
    child.wait().unwrap();
    socket.kill();
    socket.restart().unwrap();
    let log = run_to_end(&cable, &socket);
    assert!(log.contains("resuming the session"), "{log}");
    assert!(
        !socket.log_text().contains("OutdatedChannelManager"),
        "the cut came within a payment after all:\n{}",
        socket.log_text()
    );
    let report = cable.session_report().unwrap();
    assert_eq!(report.session_id, session);
    assert_eq!(report.outcome, "session budget spent", "{report:?}");

    // Six quotas, six invoices, each paid and credited once; both sides agree on the sum.
    let socket_db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let (received, msat, hashes): (i64, i64, i64) = socket_db
        .query_row(
            "SELECT COUNT(*), SUM(amount_msat), COUNT(DISTINCT payment_hash) FROM ln_payments WHERE session_id = ?1",
            [&session],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((received, msat, hashes), (6, 6_000_000, 6));
    let cable_db = rusqlite::Connection::open(cable.data_dir.join("cable.sqlite")).unwrap();
    let (paid, paid_msat): (i64, i64) = cable_db
        .query_row(
            "SELECT COUNT(*), SUM(amount_msat) FROM ln_payments WHERE session_id = ?1 AND status = 'paid'",
            [&session],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((paid, paid_msat), (6, 6_000_000));
    let mempool: Vec<String> = regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap();
    assert!(
        mempool.is_empty(),
        "the restart touched the chain: {mempool:?}"
    );
}

/// A cable stopped mid-session, back after the socket ended that session (the link went and
/// the socket unplugged it): it must not pay the ended session a keysend (which the socket
/// cannot refuse, and would only book against the ended session), nor wait for it for good at
/// a standby outlet. It asks for terms, learns the session ended, and goes on in a new one.
#[test]
fn a_cable_back_after_its_session_ended_pays_it_nothing_more_and_opens_a_new_one() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 100 W: a quota of 8 Wh lasts about 14 s at the setup's x20 clock, time to stop the cable
    // between payments.
    let setup = SocketSetup {
        load_toml: "kind = \"constant\"\npower_w = 100.0".into(),
        ..lightning_setup()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    // Two quotas a session: the invoice that opens it, then a keysend.
    let cable = funded_cable(&bitcoind, dir.path(), &socket, 2_000);
    let miner = Miner::start(&bitcoind, Duration::from_millis(500));
    let mut child = cable.spawn_run().unwrap();
    let first = session_after(&socket, 2);
    // Stopped between payments: once the cable has booked the keysend as paid too (stopped
    // before, it would send that same keysend again on its return, and find the session ended
    // by its status alone).
    let cable_db = cable.data_dir.join("cable.sqlite");
    let paid_in = |session: &str| -> i64 {
        rusqlite::Connection::open(&cable_db)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM ln_payments WHERE session_id = ?1 AND status = 'paid'",
                [session],
                |r| r.get(0),
            )
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while paid_in(&first) < 2 {
        assert!(
            Instant::now() < deadline,
            "the cable never booked its keysend"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The link is gone: the socket unplugs the session.
    wait_for_standby(&socket);

    let log = run_to_end(&cable, &socket);
    drop(miner);
    assert!(log.contains("resuming the session"), "{log}");
    assert!(
        log.contains("ended the session while the cable was away"),
        "{log}"
    );
    let report = cable.session_report().unwrap();
    assert_ne!(report.session_id, first, "{report:?}");
    assert_eq!(report.outcome, "session budget spent", "{report:?}");

    // The ended session: its invoice and its keysend, on both sides, nothing after; the new
    // one paid in full.
    let socket_db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let received = |session: &str| -> (i64, i64) {
        socket_db
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(amount_msat), 0) FROM ln_payments WHERE session_id = ?1",
                [session],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let second = report.session_id.as_str();
    assert_eq!(received(&first), (2, 2_000_000));
    assert_eq!(received(second), (2, 2_000_000));
    let late: i64 = socket_db
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE event LIKE 'keysend-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(late, 0, "a keysend the socket could not credit");
    assert_eq!((paid_in(&first), paid_in(second)), (2, 2));
}

/// A plain ldk-node with a public alias, as a Lightning hub is: it forwards to announced
/// channels (BOLT 7), the only ones LDK forwards to.
fn start_hub(bitcoind: &Regtest, dir: &std::path::Path) -> std::sync::Arc<ln::ldk_node::Node> {
    let listen = format!("127.0.0.1:{}", integration::free_port().unwrap());
    let hub = integration::ln_node(
        bitcoind,
        dir,
        &ln::LnSettings {
            listen: Some(listen.parse().unwrap()),
            alias: Some("t2t-test-hub".into()),
            ..ln::LnSettings::default()
        },
    );
    integration::fund_ln_node(bitcoind, &hub, Amount::from_sat(1_000_000));
    hub
}

#[test]
fn through_a_hub_a_cable_pays_a_socket_it_has_no_channel_with() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        lightning_alias: Some("t2t-test-socket".into()),
        ..lightning_setup()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let offer = socket.offer().unwrap();
    let ln_offer = proto::terms::offered_lightning(&offer).unwrap();
    let socket_id =
        ln::ldk_node::bitcoin::secp256k1::PublicKey::from_slice(&ln_offer.node_id).unwrap();
    let hub = start_hub(&bitcoind, &dir.path().join("hub"));
    let hub_peer = format!(
        "{}@{}",
        hub.node_id(),
        hub.listening_addresses().unwrap()[0]
    );

    // The hub's announced channel to the socket (the socket's operator arranged it).
    hub.open_announced_channel(
        socket_id,
        ln_offer.address.parse().unwrap(),
        500_000,
        None,
        None,
    )
    .unwrap();
    let setup = CableSetup {
        lightning_hub: Some(hub_peer),
        ..lightning_cable()
    };
    let cable = funded_cable_of(&bitcoind, dir.path(), &socket, &setup);

    // The cable's one channel goes to the hub, opened before it is plugged in; it is ready once
    // the hub's channel to the socket has been gossiped to it.
    let miner = Miner::start(&bitcoind, Duration::from_millis(500));
    let open = cable.cli(&["open-channel"]).unwrap();
    drop(miner);
    assert!(open.contains("channel opened"), "{open}");
    let hub_to_socket = |hub: &ln::ldk_node::Node| {
        hub.list_channels()
            .into_iter()
            .find(|c| c.counterparty_node_id == socket_id && c.is_usable)
            .map(|c| c.outbound_capacity_msat)
    };
    let hub_before = hub_to_socket(&hub).expect("the hub's channel to the socket is usable");

    // The session: five quotas through the hub, nothing on chain.
    let height: u64 = regtest::rpc(bitcoind.client(), "getblockcount", &[]).unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );
    let session = cable.session_report().unwrap();
    assert_eq!(session.outcome, "appliance done", "{session:?}");
    assert_eq!(session.payments.len(), 5, "{session:?}");
    assert_eq!(session.onchain_txs.len(), 0, "{session:?}");
    let mempool: Vec<String> = regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap();
    assert!(mempool.is_empty(), "{mempool:?}");
    let after: u64 = regtest::rpc(bitcoind.client(), "getblockcount", &[]).unwrap();
    assert_eq!(after, height);

    // The socket was paid exactly the five quotas, forwarded by the hub; the cable has no
    // channel with the socket.
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let (received, msat): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), SUM(amount_msat) FROM ln_payments",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((received, msat), (5, 5_000_000));
    let hub_after = hub_to_socket(&hub).unwrap();
    assert_eq!(hub_before - hub_after, 5_000_000);
    let channels = cable.cli(&["channels"]).unwrap();
    assert!(channels.contains(&hub.node_id().to_string()), "{channels}");
    assert!(!channels.contains(&socket_id.to_string()), "{channels}");
    hub.stop().unwrap();
}

#[test]
fn a_socket_that_trusts_the_cable_takes_its_channel_before_it_confirms() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut socket =
        SocketProcess::start(&bitcoind, &dir.path().join("socket"), &lightning_setup()).unwrap();
    let cable = funded_cable_of(&bitcoind, dir.path(), &socket, &lightning_cable());

    // The socket's operator trusts this cable (its Lightning node id, from its seed).
    let cable_ln = integration::ln_node(&bitcoind, &cable.data_dir, &ln::LnSettings::default());
    let cable_id = cable_ln.node_id();
    cable_ln.stop().unwrap();
    drop(cable_ln);
    socket
        .append_config(&format!("trusted_peers_0conf = [\"{cable_id}\"]\n"))
        .unwrap();
    socket.restart().unwrap();

    // No block is mined: the channel is used while its funding transaction is in the mempool.
    let height: u64 = regtest::rpc(bitcoind.client(), "getblockcount", &[]).unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );
    let session = cable.session_report().unwrap();
    assert_eq!(session.payments.len(), 5, "{session:?}");
    let funding = session.onchain_txs[0].txid.clone();
    let mempool: Vec<String> = regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap();
    assert!(mempool.contains(&funding), "{mempool:?}");
    let after: u64 = regtest::rpc(bitcoind.client(), "getblockcount", &[]).unwrap();
    assert_eq!(after, height);
}
