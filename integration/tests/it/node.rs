//! A socket started in-process as a library (design.md "Architecture v3"): the same
//! `socket_node::node::Node` that `socket-node run` starts, on ports the system chooses, and
//! stopped with every server and job joined.

use std::time::Duration;

use integration::{SocketSetup, OUTLET};
use proto::v1::socket_client::SocketClient;
use regtest::Regtest;
use socket_node::config::SocketConfig;
use socket_node::node::Node;

#[test]
fn a_socket_starts_in_process_serves_a_signed_offer_and_stops_with_every_server() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let written =
        integration::write_socket_config(&bitcoind, dir.path(), &SocketSetup::default()).unwrap();
    let mut config = SocketConfig::load(&written.config).unwrap();
    let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    (config.listen, config.operator_listen, config.http_listen) = (any_port, any_port, any_port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let settlers_before = threads_named("settler");
    runtime.block_on(async {
        let node = Node::start(config, &dir.path().join("socket-data"))
            .await
            .unwrap();
        assert_ne!(node.cable_address.port(), 0, "the port the system chose");
        let endpoint = format!("http://{}", node.cable_address);
        let mut client = SocketClient::connect(endpoint.clone()).await.unwrap();
        let offer = integration::signed_offer(&mut client, OUTLET)
            .await
            .unwrap();
        assert_eq!(offer.outlet_id, OUTLET);
        assert_eq!(offer.socket_identity_key, node.identity_key().to_vec());
        let dashboard = format!("http://{}/metrics", node.http_address);
        drop(client);

        tokio::time::timeout(Duration::from_secs(30), node.stop())
            .await
            .expect("every server ends")
            .unwrap();
        // Stopped: nothing listens on any of its addresses.
        assert!(SocketClient::connect(endpoint).await.is_err());
        let http = dashboard
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(http).await.is_err());
    });
    // Its jobs ended with it: no settler thread left behind.
    assert_eq!(threads_named("settler"), settlers_before);
}

/// How many threads of this process are named `name` (Linux: /proc/self/task/*/comm). Only
/// this test starts a socket in-process.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}
