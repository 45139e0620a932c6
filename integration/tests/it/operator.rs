//! The operator's surface of a real `socket-node` process (design.md "Operator surface"): the
//! operator API wants a bearer token from the data dir, the read-only one cannot act; both
//! gRPC servers answer `grpc.health.v1` and list their services by reflection, with no .proto
//! and no token.

use std::path::Path;

use integration::{SocketProcess, SocketSetup};
use proto::v1::operator_client::OperatorClient;
use proto::v1::{CloseChannelRequest, ListChannelsRequest};
use regtest::Regtest;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

fn with_token<T>(message: T, data_dir: &Path, file: &str) -> tonic::Request<T> {
    let token = std::fs::read_to_string(data_dir.join(file)).unwrap();
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The services a gRPC server lists by reflection.
async fn reflected_services(endpoint: &str) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel(endpoint).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

async fn health(endpoint: &str, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel(endpoint).await);
    let reply = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(reply.status).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_api_wants_its_tokens_and_both_servers_answer_health_and_reflection() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = tokio::task::block_in_place(|| {
        SocketProcess::start(
            &bitcoind,
            &dir.path().join("socket"),
            &SocketSetup::default(),
        )
    })
    .unwrap();
    let data_dir = &socket.data_dir;

    // Tokens: created at first start, private to the owner.
    for file in ["admin.token", "readonly.token"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(data_dir.join(file))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let mut operator = OperatorClient::connect(socket.operator.clone())
        .await
        .unwrap();
    // No token, or a wrong one: refused before anything is done.
    let none = operator
        .list_channels(ListChannelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let mut wrong = tonic::Request::new(CloseChannelRequest {
        channel_id: String::new(),
        force: true,
    });
    wrong.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", "ab".repeat(32)).parse().unwrap(),
    );
    let wrong = operator.close_channel(wrong).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    // The read-only token reads (this socket has no Lightning node: the call itself says so)
    // and cannot close channels; the admin token can ask.
    let read = operator
        .list_channels(with_token(
            ListChannelsRequest {},
            data_dir,
            "readonly.token",
        ))
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::FailedPrecondition, "{read:?}");
    let close = CloseChannelRequest {
        channel_id: String::new(),
        force: true,
    };
    let denied = operator
        .close_channel(with_token(close.clone(), data_dir, "readonly.token"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let admin = operator
        .close_channel(with_token(close, data_dir, "admin.token"))
        .await
        .unwrap_err();
    assert_eq!(admin.code(), Code::FailedPrecondition, "{admin:?}");
    // The CLI finds the token in the data dir.
    let cli = tokio::task::block_in_place(|| socket.operator_cli("channels", &[])).unwrap_err();
    assert!(cli.to_string().contains("no Lightning node"), "{cli:#}");

    // Health and reflection on both servers, no token needed.
    for (endpoint, service) in [
        (&socket.endpoint, "t2t.v1.Socket"),
        (&socket.operator, "t2t.v1.Operator"),
    ] {
        assert_eq!(health(endpoint, "").await, ServingStatus::Serving);
        assert_eq!(health(endpoint, service).await, ServingStatus::Serving);
        let services = reflected_services(endpoint).await;
        for expected in [service, "grpc.health.v1.Health"] {
            assert!(
                services.iter().any(|s| s == expected),
                "{endpoint}: {services:?}"
            );
        }
    }
}

/// Rows of the socket store's tables that a restore must keep.
fn books(data_dir: &Path) -> Vec<(String, i64)> {
    let db = rusqlite::Connection::open(data_dir.join("socket.sqlite")).unwrap();
    ["sessions", "payments", "terms", "audit"]
        .iter()
        .map(|table| {
            let n: i64 = db
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            (table.to_string(), n)
        })
        .collect()
}

#[test]
fn a_backup_taken_while_the_socket_runs_restores_the_same_socket() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup::default(),
    )
    .unwrap();
    let cable = integration::CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &integration::CableSetup::default(),
        bitcoin::Amount::from_sat(100_000),
    )
    .unwrap();
    let out = cable.run(std::time::Duration::from_secs(120)).unwrap();
    assert!(out.status.success(), "{}", socket.log_text());
    let identity = socket.offer().unwrap().socket_identity_key;
    let before = books(&socket.data_dir);
    assert!(
        before.iter().any(|(t, n)| t == "payments" && *n > 0),
        "{before:?}"
    );

    // Online: the socket keeps running while its databases are copied.
    let backup = dir.path().join("backup");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(integration::binary("socket-node").unwrap())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let data_dir = socket.data_dir.to_str().unwrap().to_owned();
    let (ok, out) = cli(&[
        "backup",
        "--data-dir",
        &data_dir,
        "--to",
        backup.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    // Never over an existing backup.
    let (ok, out) = cli(&[
        "backup",
        "--data-dir",
        &data_dir,
        "--to",
        backup.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("not empty"), "{out}");

    // The device dies; a new one starts from the backup in an empty data dir.
    socket.kill();
    std::fs::rename(&socket.data_dir, dir.path().join("dead-socket-data")).unwrap();
    let (ok, out) = cli(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        &data_dir,
    ]);
    assert!(ok, "{out}");
    socket.restart().unwrap();
    assert_eq!(socket.offer().unwrap().socket_identity_key, identity);
    let after = books(&socket.data_dir);
    for ((table, n), (_, m)) in before.iter().zip(&after) {
        if table == "audit" {
            assert!(m >= n, "{table}: {n} before, {m} after");
        } else {
            assert_eq!(n, m, "{table}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(socket.data_dir.join("admin.token")).unwrap(),
        std::fs::read_to_string(dir.path().join("dead-socket-data/admin.token")).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn under_systemd_the_socket_says_when_it_is_ready_and_when_it_stops() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut socket = tokio::task::block_in_place(|| {
        SocketProcess::start(
            &bitcoind,
            &dir.path().join("socket"),
            &SocketSetup::default(),
        )
    })
    .unwrap();
    // What systemd does for Type=notify: a datagram socket in NOTIFY_SOCKET.
    let path = dir.path().join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    socket
        .env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    tokio::task::block_in_place(|| socket.restart()).unwrap();
    let mut message = [0u8; 256];
    let n = systemd.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"READY=1\n");
    // Ready means serving: the dashboard answers too.
    let healthz = std::net::TcpStream::connect(socket.http.trim_start_matches("http://"));
    assert!(healthz.is_ok(), "the dashboard does not listen once ready");
    let status =
        tokio::task::block_in_place(|| socket.terminate(std::time::Duration::from_secs(60)))
            .unwrap();
    let n = systemd.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"STOPPING=1\n");
    assert!(status.success(), "{status}\n{}", socket.log_text());
    assert!(
        socket.log_text().contains("every relay open"),
        "{}",
        socket.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owner_lists_devices_and_revokes_one_whose_next_session_is_refused() {
    use proto::v1::socket_client::SocketClient;
    use proto::v1::{self, RevokeDeviceRequest};
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = tokio::task::block_in_place(|| {
        SocketProcess::start(
            &bitcoind,
            &dir.path().join("socket"),
            &SocketSetup {
                outlets: 2,
                ..SocketSetup::default()
            },
        )
    })
    .unwrap();
    let signer = integration::cable_signer();
    let to = socket.recipient();
    let key = bitcoin::hex::DisplayHex::to_lower_hex_string(&signer.public_key().serialize()[..]);
    let mut client = SocketClient::connect(socket.endpoint.clone())
        .await
        .unwrap();
    let open = |outlet: &str| v1::PowerRequestRequest {
        outlet_id: outlet.into(),
        scheme: v1::Scheme::Onchain as i32,
        ..Default::default()
    };
    // A cable plugs in and opens a session.
    let _link = client
        .watch_status(integration::cable_signer().sign(
            &to,
            v1::WatchStatusRequest {
                outlet_id: "outlet-1".into(),
                auth: None,
            },
        ))
        .await
        .unwrap();
    let terms = client
        .power_request(signer.sign(&to, open("outlet-1")))
        .await
        .unwrap()
        .into_inner();

    let listed = tokio::task::block_in_place(|| socket.operator_cli("devices", &[])).unwrap();
    assert!(
        listed.contains(&format!("{key} cable allowed: 1 sessions")),
        "{listed}"
    );
    // The read-only token cannot revoke.
    let mut operator = OperatorClient::connect(socket.operator.clone())
        .await
        .unwrap();
    let denied = operator
        .revoke_device(with_token(
            RevokeDeviceRequest {
                identity_key: signer.public_key().serialize().to_vec(),
                reason: "no".into(),
            },
            &socket.data_dir,
            "readonly.token",
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // The admin (the CLI reads admin.token): revoked, its session halted.
    let revoked = tokio::task::block_in_place(|| {
        socket.operator_cli("revoke", &[&key, "--reason", "reported stolen"])
    })
    .unwrap();
    assert!(
        revoked.contains(&format!("session {} halted", terms.session_id)),
        "{revoked}"
    );
    let status = tokio::task::block_in_place(|| socket.status()).unwrap();
    assert_eq!(status.state, v1::OutletState::Lockout as i32);
    assert!(
        status.reason.contains("reported stolen"),
        "{}",
        status.reason
    );
    let listed = tokio::task::block_in_place(|| socket.operator_cli("devices", &[])).unwrap();
    assert!(
        listed.contains("revoked (revoked by the operator: reported stolen)"),
        "{listed}"
    );
    // Its next session, on the other outlet, is refused at opening, with the reason and the
    // reason code.
    let _link2 = client
        .watch_status(integration::cable_signer().sign(
            &to,
            v1::WatchStatusRequest {
                outlet_id: "outlet-2".into(),
                auth: None,
            },
        ))
        .await
        .unwrap();
    let refused = client
        .power_request(signer.sign(&to, open("outlet-2")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        proto::errors::reason_of(&refused),
        Some(v1::ErrorReason::CableBanned)
    );
    assert!(
        refused
            .message()
            .contains("revoked by the operator: reported stolen"),
        "{refused:?}"
    );
}

/// `socket-node <args>`: (success, stdout and stderr).
fn socket_node(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = std::process::Command::new(integration::binary("socket-node").unwrap())
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

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_travels_to_another_socket_in_a_signed_registry_refused_whole_if_altered() {
    use proto::v1::socket_client::SocketClient;
    use proto::v1::{self};
    use std::ffi::OsStr;
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let operator_dir = dir.path().join("operator");
    let (ok, operator_key) = socket_node(&[
        OsStr::new("identity"),
        OsStr::new("--data-dir"),
        operator_dir.as_os_str(),
    ]);
    assert!(ok, "{operator_key}");
    let operator_key = operator_key.trim().to_owned();
    let (a, b) = tokio::task::block_in_place(|| {
        let a = SocketProcess::start(&bitcoind, &dir.path().join("a"), &SocketSetup::default());
        let b = SocketProcess::start(
            &bitcoind,
            &dir.path().join("b"),
            &SocketSetup {
                top_toml: format!("registry_operator_keys = [{operator_key:?}]"),
                ..SocketSetup::default()
            },
        );
        (a.unwrap(), b.unwrap())
    });
    let signer = integration::cable_signer();
    let key = bitcoin::hex::DisplayHex::to_lower_hex_string(&signer.public_key().serialize()[..]);
    // Socket A has seen the cable; its owner revokes it.
    let open = || v1::PowerRequestRequest {
        outlet_id: "outlet-1".into(),
        scheme: v1::Scheme::Onchain as i32,
        ..Default::default()
    };
    let mut to_a = SocketClient::connect(a.endpoint.clone()).await.unwrap();
    let _link = to_a
        .watch_status(integration::cable_signer().sign(
            &a.recipient(),
            v1::WatchStatusRequest {
                outlet_id: "outlet-1".into(),
                auth: None,
            },
        ))
        .await
        .unwrap();
    to_a.power_request(signer.sign(&a.recipient(), open()))
        .await
        .unwrap();
    tokio::task::block_in_place(|| a.operator_cli("revoke", &[&key, "--reason", "stolen"]))
        .unwrap();
    // A's owner declares another cable's profile (a 60 W lamp, at most 500 Wh a session).
    let lamp = bitcoin::hex::DisplayHex::to_lower_hex_string(&integration::fake_public_key(2)[..]);
    let (ok, text) = socket_node(&[
        OsStr::new("profile"),
        OsStr::new(&lamp),
        OsStr::new("--max-power-w"),
        OsStr::new("60"),
        OsStr::new("--max-energy-per-session-wh"),
        OsStr::new("500"),
        OsStr::new("--data-dir"),
        a.data_dir.as_os_str(),
    ]);
    assert!(ok && text.contains("max power 60 W"), "{text}");
    // The operator signs A's revocations and profiles into a registry.
    let registry = dir.path().join("registry.json");
    let (ok, text) = socket_node(&[
        OsStr::new("registry"),
        OsStr::new("export"),
        OsStr::new("--operator-dir"),
        operator_dir.as_os_str(),
        OsStr::new("--data-dir"),
        a.data_dir.as_os_str(),
        OsStr::new("--out"),
        registry.as_os_str(),
    ]);
    assert!(ok && text.contains("2 devices signed"), "{text}");
    let b_config = dir.path().join("b").join("socket.toml");
    let import = |file: &std::path::Path| {
        socket_node(&[
            OsStr::new("registry"),
            OsStr::new("import"),
            file.as_os_str(),
            OsStr::new("--config"),
            b_config.as_os_str(),
            OsStr::new("--data-dir"),
            b.data_dir.as_os_str(),
        ])
    };
    let revoked_on_b = || {
        let db = rusqlite::Connection::open(b.data_dir.join("socket.sqlite")).unwrap();
        db.query_row(
            "SELECT COUNT(*) FROM cables WHERE banned_reason IS NOT NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    };
    // One byte of the body changed: refused whole, nothing applied.
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&registry).unwrap()).unwrap();
    let body = file["body_hex"].as_str().unwrap().to_owned();
    let last = body.len() - 1;
    let flipped = if &body[last..] == "0" { "1" } else { "0" };
    file["body_hex"] = format!("{}{flipped}", &body[..last]).into();
    let altered = dir.path().join("altered.json");
    std::fs::write(&altered, file.to_string()).unwrap();
    let (ok, text) = import(&altered);
    assert!(!ok, "an altered registry was imported:\n{text}");
    assert!(text.contains("refused whole"), "{text}");
    assert_eq!(revoked_on_b(), 0);
    // The registry as signed: B refuses the cable with the reason.
    let (ok, text) = import(&registry);
    assert!(ok && text.contains("imported 2 devices"), "{text}");
    assert_eq!(revoked_on_b(), 1);
    let lamp_on_b: (i64, i64) = rusqlite::Connection::open(b.data_dir.join("socket.sqlite"))
        .unwrap()
        .query_row(
            "SELECT profile_max_power_w, profile_max_energy_per_session_wh FROM cables
             WHERE key_hex = ?1",
            [&lamp],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(lamp_on_b, (60, 500));
    let mut to_b = SocketClient::connect(b.endpoint.clone()).await.unwrap();
    let _link = to_b
        .watch_status(integration::cable_signer().sign(
            &b.recipient(),
            v1::WatchStatusRequest {
                outlet_id: "outlet-1".into(),
                auth: None,
            },
        ))
        .await
        .unwrap();
    let refused = to_b
        .power_request(signer.sign(&b.recipient(), open()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        proto::errors::reason_of(&refused),
        Some(v1::ErrorReason::CableBanned)
    );
    assert!(
        refused
            .message()
            .contains(&format!("revoked by operator {operator_key}: stolen")),
        "{refused:?}"
    );
}
