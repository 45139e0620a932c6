//! A flood on the power-line link (design.md "Trust", the socket's `[limits]`): one host (its
//! own loopback address) opens many connections and sends requests and status streams as fast
//! as it can, for as long as an honest cable's session on another outlet lasts. The flooder is rate limited
//! (RESOURCE_EXHAUSTED, RATE_LIMITED); the honest cable pays every quota and is never locked
//! out. The honest cable's payment latencies are printed beside the flood's size.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::Amount;
use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use proto::v1::socket_client::SocketClient;
use proto::v1::{self};
use regtest::Regtest;

/// Connections the flooder opens, and calls it keeps in flight on each.
const CONNECTIONS: usize = 8;
const CALLS_PER_CONNECTION: usize = 4;

#[derive(Default)]
struct Counts {
    answered: AtomicU64,
    rate_limited: AtomicU64,
    other_errors: AtomicU64,
}

/// The flooder's host: another loopback address than the honest cable's 127.0.0.1, as two
/// devices on the power-line link have two addresses (the socket limits requests per host).
const FLOODER_HOST: &str = "127.0.0.2";

/// A client of the socket at `endpoint` whose connection comes from `host` (a loopback
/// address: Linux routes all of 127.0.0.0/8 to the loopback interface).
async fn connect_from(
    host: &'static str,
    endpoint: &str,
) -> Result<SocketClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect_with_connector(tower::service_fn(
            move |uri: tonic::transport::Uri| async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(std::net::SocketAddr::new(host.parse().expect("an IP"), 0))?;
                let to = format!(
                    "{}:{}",
                    uri.host().unwrap_or("127.0.0.1"),
                    uri.port_u16().unwrap_or(80)
                );
                let stream = socket
                    .connect(to.parse().map_err(std::io::Error::other)?)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            },
        ))
        .await?;
    Ok(SocketClient::new(channel))
}

async fn flood(endpoint: String, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let Ok(client) = connect_from(FLOODER_HOST, &endpoint).await else {
            continue;
        };
        // Status streams held open on another outlet (half the streams allowed per connection,
        // so that its calls still get through to be rate limited).
        for _ in 0..8 {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let stream = client
                    .watch_status(v1::WatchStatusRequest {
                        outlet_id: "outlet-1".into(),
                        auth: None,
                    })
                    .await;
                // Held open until the test ends.
                tokio::time::sleep(Duration::from_secs(600)).await;
                drop(stream);
            }));
        }
        for call in 0..CALLS_PER_CONNECTION {
            let mut client = client.clone();
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let result = match call % 3 {
                        0 => client
                            .get_status(v1::GetStatusRequest {
                                outlet_id: "outlet-2".into(),
                            })
                            .await
                            .map(|_| ()),
                        1 => client
                            .get_offer(v1::GetOfferRequest {
                                outlet_id: "outlet-2".into(),
                                cable_nonce: vec![7; 32],
                            })
                            .await
                            .map(|_| ()),
                        _ => client
                            .pay_transaction(v1::PayTransactionRequest {
                                session_id: "guess".into(),
                                payment_id: 1,
                                psbt: vec![0xff; 200],
                                auth: None,
                            })
                            .await
                            .map(|_| ()),
                    };
                    match result {
                        Ok(()) => counts.answered.fetch_add(1, Ordering::Relaxed),
                        Err(status)
                            if proto::errors::reason_of(&status)
                                == Some(v1::ErrorReason::RateLimited) =>
                        {
                            counts.rate_limited.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => counts.other_errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.abort();
    }
}

#[test]
fn a_flooding_peer_is_rate_limited_and_an_honest_cable_pays_on() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            outlets: 2,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            outlet_id: "outlet-2".into(),
            ..CableSetup::default()
        },
        Amount::from_sat(100_000),
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let flooder = {
        let (endpoint, stop, counts) = (
            socket.endpoint.clone(),
            Arc::clone(&stop),
            Arc::clone(&counts),
        );
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
                .block_on(flood(endpoint, stop, counts))
        })
    };
    // The flood is on before the honest cable plugs in, and lasts its whole session.
    std::thread::sleep(Duration::from_secs(2));
    let out = cable.run(Duration::from_secs(180)).unwrap();
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();

    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "cable failed:\n{log}\nsocket:\n{}",
        socket.log_text()
    );
    let report = cable.session_report().unwrap();
    assert_eq!(report.outcome, "appliance done", "{report:?}");
    let payments = &report.payments;
    assert_eq!(payments.len(), 5, "{report:?}");
    let mut latencies: Vec<u64> = payments.iter().map(|p| p.latency_ms.unwrap()).collect();
    latencies.sort_unstable();
    let (answered, limited, other) = (
        counts.answered.load(Ordering::Relaxed),
        counts.rate_limited.load(Ordering::Relaxed),
        counts.other_errors.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood of {CONNECTIONS} connections: {answered} answered, {limited} rate limited, \
         {other} refused otherwise; honest cable's quota latencies (ms): {latencies:?}"
    );
    assert!(limited > 0, "the flooder was never rate limited");
    let socket_log = socket.log_text();
    assert!(!socket_log.contains("lockout"), "{socket_log}");
}
