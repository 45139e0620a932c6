//! Two real Lightning nodes on a real regtest bitcoind: a channel opened and confirmed, a
//! BOLT11 invoice paid over it, the payment seen by both.

use std::time::{Duration, Instant};

use bitcoin::{Address, Amount};
use ln::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use ln::ldk_node::{Event, Node};
use ln::{start_node, LnSettings};
use regtest::Regtest;
use wallet::chain::ChainConfig;
use wallet::keys::NodeKeys;

fn node(bitcoind: &Regtest, dir: &std::path::Path, listen: bool) -> std::sync::Arc<Node> {
    let keys = NodeKeys::load_or_create(dir, bitcoin::Network::Regtest).unwrap();
    let chain = ChainConfig {
        rpc_url: bitcoind.rpc_url(),
        cookie_file: bitcoind.cookie_file().to_owned(),
    };
    let listen = listen.then(|| {
        format!("127.0.0.1:{}", regtest::free_port().unwrap())
            .parse()
            .unwrap()
    });
    start_node(
        dir,
        &keys,
        &chain,
        &LnSettings {
            listen,
            ..LnSettings::default()
        },
    )
    .unwrap()
}

fn next_event(node: &Node, limit: Duration, mut want: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + limit;
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for an event");
        if let Some(event) = node.next_event() {
            node.event_handled().unwrap();
            if want(&event) {
                return event;
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_channel_pays_an_invoice() {
    let bitcoind = Regtest::start().unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&bitcoind, a_dir.path(), false);
    let b = node(&bitcoind, b_dir.path(), true);

    let address: Address = a.onchain_payment().new_address().unwrap();
    let address =
        Address::from_script(&address.script_pubkey(), bitcoin::Network::Regtest).unwrap();
    bitcoind.fund(&address, Amount::from_sat(500_000)).unwrap();
    a.sync_wallets().unwrap();
    assert!(a.list_balances().spendable_onchain_balance_sats >= 500_000);

    let b_address = b.listening_addresses().unwrap()[0].clone();
    a.open_channel(b.node_id(), b_address, 200_000, None, None)
        .unwrap();
    next_event(&a, Duration::from_secs(30), |e| {
        matches!(e, Event::ChannelPending { .. })
    });
    bitcoind.mine(6).unwrap();
    a.sync_wallets().unwrap();
    b.sync_wallets().unwrap();
    next_event(&a, Duration::from_secs(60), |e| {
        matches!(e, Event::ChannelReady { .. })
    });
    next_event(&b, Duration::from_secs(60), |e| {
        matches!(e, Event::ChannelReady { .. })
    });

    let description =
        Bolt11InvoiceDescription::Direct(Description::new("outlet-1 quota".into()).unwrap());
    let invoice = b
        .bolt11_payment()
        .receive(1_000_000, &description, 600)
        .unwrap();
    a.bolt11_payment().send(&invoice, None).unwrap();
    next_event(&a, Duration::from_secs(30), |e| {
        matches!(e, Event::PaymentSuccessful { .. })
    });
    match next_event(&b, Duration::from_secs(30), |e| {
        matches!(e, Event::PaymentReceived { .. })
    }) {
        Event::PaymentReceived {
            amount_msat,
            payment_hash,
            ..
        } => {
            assert_eq!(amount_msat, 1_000_000);
            assert_eq!(
                &payment_hash.0[..],
                AsRef::<[u8]>::as_ref(invoice.payment_hash())
            );
        }
        _ => unreachable!(),
    }
    a.stop().unwrap();
    b.stop().unwrap();
}
