//! Trust on the link (design.md "Trust"): a session belongs to the cable whose identity key
//! opened it. A stranger on the same power-line link, who can read the outlet's status, cannot
//! pay into, ask terms for, or end that session: unsigned, wrongly signed and replayed requests
//! get `UNAUTHENTICATED`, change nothing and lock nothing out. The owner ends it cleanly.

use std::time::Duration;

use cable_node::signer::RequestSigner;
use integration::{SocketProcess, SocketSetup, OUTLET};
use proto::identity::session_hash;
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, OutletState};
use regtest::Regtest;
use tonic::Code;

fn refused_unauthenticated<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(
        proto::errors::reason_of(&status),
        Some(v1::ErrorReason::Unauthenticated),
        "{what}"
    );
}

async fn outlet_status(
    client: &mut SocketClient<tonic::transport::Channel>,
) -> v1::GetStatusResponse {
    client
        .get_status(v1::GetStatusRequest {
            outlet_id: OUTLET.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[test]
fn a_stranger_on_the_link_cannot_touch_a_cables_session() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            payment_timeout_secs: 120,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    let socket_key =
        bitcoin::secp256k1::PublicKey::from_slice(&socket.offer().unwrap().socket_identity_key)
            .unwrap();
    let to = socket.recipient();
    let owner = integration::cable_signer();
    let stranger =
        RequestSigner::new(bitcoin::secp256k1::SecretKey::from_slice(&[0x66; 32]).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = SocketClient::connect(socket.endpoint.clone())
            .await
            .unwrap();
        // The owner plugs in (the link stays open) and opens a session.
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
        let opening = owner.sign(
            &to,
            v1::PowerRequestRequest {
                outlet_id: OUTLET.into(),
                scheme: v1::Scheme::Onchain as i32,
                ..Default::default()
            },
        );
        let terms = client
            .power_request(opening.clone())
            .await
            .unwrap()
            .into_inner();
        let session_id = terms.session_id.clone();

        // The public status shows the session by its hash only, signed by the socket...
        let status = outlet_status(&mut client).await;
        assert_eq!(status.session_hash, session_hash(&session_id));
        let report =
            proto::identity::verify_status(status.signed.as_ref().unwrap(), &socket_key, OUTLET)
                .unwrap();
        assert_eq!(report.session_hash, status.session_hash);
        // ...but a stranger who learned the id anyway (the link is a shared medium) tries
        // everything with it.
        let garbage = || v1::PayTransactionRequest {
            session_id: session_id.clone(),
            payment_id: terms.payment_id,
            psbt: b"not a psbt".to_vec(),
            auth: None,
        };
        refused_unauthenticated(
            client.pay_transaction(garbage()).await,
            "an unsigned payment",
        );
        refused_unauthenticated(
            client.pay_transaction(stranger.sign(&to, garbage())).await,
            "a payment signed by a stranger",
        );
        refused_unauthenticated(
            client
                .end_session(stranger.sign(
                    &to,
                    v1::EndSessionRequest {
                        session_id: session_id.clone(),
                        auth: None,
                        receipt: None,
                    },
                ))
                .await,
            "a stranger ending the session",
        );
        refused_unauthenticated(
            client
                .fund_channel(stranger.sign(
                    &to,
                    v1::FundChannelRequest {
                        session_id: session_id.clone(),
                        deposit_tx: b"not a deposit".to_vec(),
                        auth: None,
                    },
                ))
                .await,
            "a stranger handing a deposit to the session",
        );
        // A channel of its own on the busy outlet opens nothing and ends nothing.
        let busy = client
            .open_channel(stranger.sign(
                &to,
                v1::OpenChannelRequest {
                    outlet_id: OUTLET.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("the outlet is busy");
        assert_ne!(busy.code(), Code::Ok);
        refused_unauthenticated(
            client
                .power_request(stranger.sign(
                    &to,
                    v1::PowerRequestRequest {
                        outlet_id: OUTLET.into(),
                        scheme: v1::Scheme::Onchain as i32,
                        session_id: session_id.clone(),
                        ..Default::default()
                    },
                ))
                .await,
            "a stranger asking terms for the session",
        );
        // A request of the owner's, copied off the link and changed, or played back.
        let mut tampered = owner.sign(&to, garbage());
        tampered.payment_id += 1;
        refused_unauthenticated(
            client.pay_transaction(tampered).await,
            "an owner's request changed on the way",
        );
        let next_terms = owner.sign(
            &to,
            v1::PowerRequestRequest {
                outlet_id: OUTLET.into(),
                scheme: v1::Scheme::Onchain as i32,
                session_id: session_id.clone(),
                ..Default::default()
            },
        );
        let again = client
            .power_request(next_terms.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.payment_id, terms.payment_id, "the same unpaid terms");
        refused_unauthenticated(client.power_request(next_terms).await, "a replayed request");

        // Nothing changed: the owner's session is still in progress, no lockout.
        let status = outlet_status(&mut client).await;
        assert_eq!(status.state, OutletState::Standby as i32, "{status:?}");
        assert_eq!(status.session_hash, session_hash(&session_id), "{status:?}");
        assert!(status.reason.is_empty(), "{status:?}");

        // The owner ends it cleanly.
        client
            .end_session(owner.sign(
                &to,
                v1::EndSessionRequest {
                    session_id: session_id.clone(),
                    auth: None,
                    receipt: None,
                },
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = outlet_status(&mut client).await;
        assert_eq!(status.state, OutletState::Standby as i32, "{status:?}");
        assert!(status.session_hash.is_empty(), "{status:?}");

        // The owner's opening request, recorded on the link and played back, opens nothing.
        refused_unauthenticated(
            client.power_request(opening).await,
            "a replayed opening request",
        );
        let status = outlet_status(&mut client).await;
        assert!(status.session_hash.is_empty(), "{status:?}");
        // The owner's opening request for another socket (recorded there, same outlet id) or
        // another network, played here, opens nothing: the signature names its socket.
        let elsewhere = proto::request_auth::Recipient {
            socket_identity_key: RequestSigner::new(
                bitcoin::secp256k1::SecretKey::from_slice(&[0x12; 32]).unwrap(),
            )
            .public_key(),
            ..to
        };
        let other_network = proto::request_auth::Recipient {
            network: v1::Network::Signet,
            ..to
        };
        for (recipient, what) in [
            (elsewhere, "an opening request signed for another socket"),
            (
                other_network,
                "an opening request signed for another network",
            ),
        ] {
            let played = owner.sign(
                &recipient,
                v1::PowerRequestRequest {
                    outlet_id: OUTLET.into(),
                    scheme: v1::Scheme::Onchain as i32,
                    ..Default::default()
                },
            );
            refused_unauthenticated(client.power_request(played).await, what);
        }
        let status = outlet_status(&mut client).await;
        assert!(status.session_hash.is_empty(), "{status:?}");
    });
    let log = socket.log_text();
    assert!(log.contains("ended by the cable"), "{log}");
    assert!(!log.contains("lockout"), "{log}");
    // The stranger's opening request for the busy outlet was refused before anything was
    // written: no row of its key in the store.
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let rows: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM cables WHERE key_hex = ?1",
            [stranger.public_key().to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0);
}

/// Presence is the cable's, not the link's (design.md "Blame needs proof"; found by a client
/// written from `proto/` alone): a cable pays, then its link drops without `EndSession` while
/// a stranger holds streams of its own on the outlet, one unsigned and one with the cable's
/// signed `WatchStatus` played back. The replay is refused, the unsigned stream only watches,
/// and the session ends as an unplug: nobody else draws the cable's quota.
#[test]
fn a_strangers_stream_keeps_no_departed_cables_session_alive() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            time_scale: 1.0,
            link_debounce_ms: 300,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    let mut payer = integration::funded_payer(&bitcoind, 1, 50_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let paid = integration::pay_a_quota_by_hand(&runtime, &socket, &mut payer);
    let to = socket.recipient();
    runtime.block_on(async {
        let mut client = SocketClient::connect(socket.endpoint.clone())
            .await
            .unwrap();
        // The cable's own second stream, signed: taken, and a copy played back is refused.
        let signed = integration::cable_signer().sign(
            &to,
            v1::WatchStatusRequest {
                outlet_id: OUTLET.into(),
                auth: None,
            },
        );
        let own = client.watch_status(signed.clone()).await.unwrap();
        refused_unauthenticated(
            client.watch_status(signed).await,
            "a signed WatchStatus played back",
        );
        // A stranger watches, unsigned.
        let _stranger = client
            .watch_status(v1::WatchStatusRequest {
                outlet_id: OUTLET.into(),
                auth: None,
            })
            .await
            .unwrap();
        let status = outlet_status(&mut client).await;
        assert_eq!(status.state, OutletState::Paid as i32, "{status:?}");
        assert!(status.relay_closed, "{status:?}");

        // The cable leaves: both its streams close, the stranger's stays.
        drop(own);
        drop(paid);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let status = loop {
            let status = outlet_status(&mut client).await;
            if status.session_hash.is_empty() || std::time::Instant::now() > deadline {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            status.session_hash.is_empty(),
            "a stranger's stream kept the session: {status:?}"
        );
        assert!(!status.relay_closed, "{status:?}");
    });
    let log = socket.log_text();
    assert!(log.contains("unplugged"), "{log}");
}

/// Raw bytes as a gRPC message, to send what no protobuf encoder would.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

/// Hostile bytes get a clear answer (socket.proto, "Ids" and `ErrorReason`): a request that
/// does not decode is `INVALID_ARGUMENT` with `ERROR_REASON_INVALID_REQUEST` (tonic's own
/// answer was `INTERNAL`, which tells a client to retry), and a 200 KB outlet id is refused
/// without being echoed into the error (which then passed a client's header limit).
#[test]
fn undecodable_requests_and_huge_ids_are_refused_as_invalid_and_not_echoed() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup::default(),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(socket.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        // Field 1 (outlet_id) as a length-delimited value claiming 100 bytes, then nothing.
        let refused = grpc
            .unary(
                tonic::Request::new(vec![0x0a, 0x64, 0x41]),
                tonic::codegen::http::uri::PathAndQuery::from_static("/t2t.v1.Socket/GetStatus"),
                Raw,
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(
            proto::errors::reason_of(&refused),
            Some(v1::ErrorReason::InvalidRequest),
            "{refused:?}"
        );

        let mut client = SocketClient::new(channel);
        let refused = client
            .get_status(v1::GetStatusRequest {
                outlet_id: "x".repeat(200_000),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().len() < 200, "{}", refused.message());
    });
}
