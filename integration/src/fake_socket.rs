//! Hand-made sockets of the cheat tests: one server ([`Fake`], [`serve_fake`]) whose calls a
//! test writes, a fake socket's identity, signed offers and status reports, and its
//! `WatchStatus` stream.

use proto::v1::socket_server::{Socket, SocketServer};
use proto::v1::{GetOfferRequest, GetStatusResponse};
use tonic::{Request, Response, Status};

use crate::OUTLET;

/// The public key (33 bytes, compressed) of the secret key `[byte; 32]`: a valid key for the
/// fake devices of the cheat tests (`byte` from 1).
pub fn fake_public_key(byte: u8) -> Vec<u8> {
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    SecretKey::from_slice(&[byte; 32])
        .expect("a secret key in range")
        .public_key(&Secp256k1::signing_only())
        .serialize()
        .to_vec()
}

/// The key pair of a fake socket's identity secret.
fn keypair(secret: &bitcoin::secp256k1::SecretKey) -> bitcoin::secp256k1::Keypair {
    bitcoin::secp256k1::Keypair::from_secret_key(
        &bitcoin::secp256k1::Secp256k1::signing_only(),
        secret,
    )
}

/// A fake socket's reply to `request`: `offer` with the request's nonce and outlet, its
/// identity key [`fake_public_key`]`(1)`, signed by it.
pub fn fake_signed_offer(
    mut offer: proto::v1::Offer,
    request: &GetOfferRequest,
) -> proto::v1::GetOfferResponse {
    let secret = bitcoin::secp256k1::SecretKey::from_slice(&[1; 32]).expect("in range");
    offer.socket_identity_key = fake_public_key(1);
    offer.cable_nonce = request.cable_nonce.clone();
    offer.outlet_id = request.outlet_id.clone();
    proto::identity::sign_offer(&offer, &keypair(&secret), Vec::new())
}

/// A fake socket's `status` of session `session_id` (empty for none) as a real socket sends it:
/// the session's hash, and the report signed by the key of [`fake_signed_offer`] with a rising
/// sequence.
pub fn fake_signed_status(
    mut status: proto::v1::GetStatusResponse,
    session_id: &str,
) -> proto::v1::GetStatusResponse {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let secret = bitcoin::secp256k1::SecretKey::from_slice(&[1; 32]).expect("in range");
    status.session_hash = proto::identity::session_hash(session_id);
    let report = proto::v1::StatusReport {
        socket_identity_key: fake_public_key(1),
        outlet_id: status.outlet_id.clone(),
        session_hash: status.session_hash.clone(),
        state: status.state,
        energy_used_mwh: status.energy_used_mwh,
        quota_remaining_mwh: status.quota_remaining_mwh,
        payments: status.payments,
        sequence: SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        time_unix_ms: 0,
    };
    status.signed = Some(proto::identity::sign_status(&report, &keypair(&secret)));
    status
}

/// What a fake socket sends once the first quota of `session_id` is paid: Paid with the
/// appliance drawing 1.3 kW, then QuotaLow (500 mWh left), so the cable pays the next quota.
pub fn fake_paid_and_quota_low(session_id: &str) -> [proto::v1::WatchStatusResponse; 2] {
    use proto::v1::watch_status_response::Event;
    let status = fake_signed_status(
        GetStatusResponse {
            outlet_id: OUTLET.into(),
            state: proto::v1::OutletState::Paid as i32,
            power_mw: 1_300_000,
            quota_remaining_mwh: 500,
            relay_closed: true,
            payments: 1,
            ..Default::default()
        },
        session_id,
    );
    let low = proto::v1::QuotaLow {
        quota_remaining_mwh: status.quota_remaining_mwh,
        power_mw: status.power_mw,
        signed: status.signed.clone(),
    };
    [
        proto::v1::WatchStatusResponse {
            event: Some(Event::Status(status)),
        },
        proto::v1::WatchStatusResponse {
            event: Some(Event::QuotaLow(low)),
        },
    ]
}

/// A `WatchStatus` stream for a hand-made socket: every event sent on `events` from now on,
/// until the cable hangs up.
pub fn watch_stream(
    events: &tokio::sync::broadcast::Sender<proto::v1::WatchStatusResponse>,
) -> tokio_stream::wrappers::ReceiverStream<Result<proto::v1::WatchStatusResponse, tonic::Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut events = events.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The `WatchStatus` stream a fake socket returns.
pub type FakeWatchStream =
    tokio_stream::wrappers::ReceiverStream<Result<proto::v1::WatchStatusResponse, Status>>;

/// A hand-made socket of a cheat test: its offer, and the calls it answers. Each call it does
/// not write answers `UNIMPLEMENTED` ("not needed"); its offer is signed by the fake identity
/// ([`fake_signed_offer`]). Serve it with [`serve_fake`].
#[tonic::async_trait]
pub trait Fake: Send + Sync + 'static {
    /// The offer, before the request's nonce and outlet and the signature are filled in.
    fn offer(&self) -> proto::v1::Offer;

    /// `GetOffer`: [`Fake::offer`] signed for `request` (a cheat may tamper with it).
    fn signed_offer(&self, request: &GetOfferRequest) -> proto::v1::GetOfferResponse {
        fake_signed_offer(self.offer(), request)
    }

    /// `GetStatus`.
    async fn get_status(&self) -> Result<GetStatusResponse, Status> {
        Err(Status::unimplemented("not needed"))
    }

    /// `WatchStatus`: the stream of the cable's link.
    async fn watch_status(&self) -> Result<FakeWatchStream, Status> {
        Err(Status::unimplemented("not needed"))
    }

    /// `PowerRequest`.
    async fn power_request(
        &self,
        _request: proto::v1::PowerRequestRequest,
    ) -> Result<proto::v1::PowerRequestResponse, Status> {
        Err(Status::unimplemented("not needed"))
    }

    /// `PayTransaction`.
    async fn pay_transaction(
        &self,
        _request: proto::v1::PayTransactionRequest,
    ) -> Result<proto::v1::PayTransactionResponse, Status> {
        Err(Status::unimplemented("not needed"))
    }

    /// `OpenChannel` (spillman).
    async fn open_channel(
        &self,
        _request: proto::v1::OpenChannelRequest,
    ) -> Result<proto::v1::OpenChannelResponse, Status> {
        Err(Status::unimplemented(
            "this fake socket has no spillman channels",
        ))
    }

    /// `FundChannel` (spillman).
    async fn fund_channel(
        &self,
        _request: proto::v1::FundChannelRequest,
    ) -> Result<proto::v1::FundChannelResponse, Status> {
        Err(Status::unimplemented(
            "this fake socket has no spillman channels",
        ))
    }

    /// `EndSession`.
    async fn end_session(
        &self,
        _request: proto::v1::EndSessionRequest,
    ) -> Result<proto::v1::EndSessionResponse, Status> {
        Err(Status::unimplemented("not needed"))
    }
}

/// The `t2t.v1.Socket` service over a [`Fake`].
struct FakeService<F>(F);

#[tonic::async_trait]
impl<F: Fake> Socket for FakeService<F> {
    async fn get_offer(
        &self,
        request: Request<GetOfferRequest>,
    ) -> Result<Response<proto::v1::GetOfferResponse>, Status> {
        Ok(Response::new(self.0.signed_offer(request.get_ref())))
    }

    async fn get_status(
        &self,
        _: Request<proto::v1::GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        self.0.get_status().await.map(Response::new)
    }

    type WatchStatusStream = FakeWatchStream;

    async fn watch_status(
        &self,
        _: Request<proto::v1::WatchStatusRequest>,
    ) -> Result<Response<FakeWatchStream>, Status> {
        self.0.watch_status().await.map(Response::new)
    }

    async fn power_request(
        &self,
        request: Request<proto::v1::PowerRequestRequest>,
    ) -> Result<Response<proto::v1::PowerRequestResponse>, Status> {
        self.0
            .power_request(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn pay_transaction(
        &self,
        request: Request<proto::v1::PayTransactionRequest>,
    ) -> Result<Response<proto::v1::PayTransactionResponse>, Status> {
        self.0
            .pay_transaction(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn open_channel(
        &self,
        request: Request<proto::v1::OpenChannelRequest>,
    ) -> Result<Response<proto::v1::OpenChannelResponse>, Status> {
        self.0
            .open_channel(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn fund_channel(
        &self,
        request: Request<proto::v1::FundChannelRequest>,
    ) -> Result<Response<proto::v1::FundChannelResponse>, Status> {
        self.0
            .fund_channel(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn end_session(
        &self,
        request: Request<proto::v1::EndSessionRequest>,
    ) -> Result<Response<proto::v1::EndSessionResponse>, Status> {
        self.0
            .end_session(request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Serve `fake` on a free port of 127.0.0.1 on `runtime`. Returns its URL (a cable's
/// `socket`) and the server's task (abort it to stop the socket). Errors: no free port.
pub fn serve_fake(
    runtime: &tokio::runtime::Runtime,
    fake: impl Fake,
) -> anyhow::Result<(
    String,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
)> {
    let port = crate::free_port()?;
    let server = runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(SocketServer::new(FakeService(fake)))
            .serve(([127, 0, 0, 1], port).into()),
    );
    Ok((format!("http://127.0.0.1:{port}"), server))
}
