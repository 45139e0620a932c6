//! The owner's dashboard of a real `socket-node` process (design.md "Operator surface"), driven
//! in headless Debian Chromium through chromedriver (WebDriver): with the read-only token it
//! shows both outlets, a live session whose energy rises, its payments and the paying cable;
//! without a token it is refused; the revoke button is absent for read-only and, for the
//! admin, revokes the cable: its session halts and its next one is refused with the reason.
//! And `/metrics`, scraped after a session, says what the store says.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/install` installs them): without them the test
//! fails and says so.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::Amount;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde_json::{json, Value};
use tonic::codegen::http;
use tonic::codegen::Bytes;

/// `method url` with an optional bearer token and JSON body: (status, body).
async fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(HttpConnector::new());
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let response = client
        .request(
            builder
                .header("content-type", "application/json")
                .body(Full::new(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn token(socket: &SocketProcess, file: &str) -> String {
    std::fs::read_to_string(socket.data_dir.join(file))
        .unwrap()
        .trim()
        .to_owned()
}

/// chromedriver on a free port, killed on drop.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Driver {
    let port = integration::free_port().unwrap();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is not installed (apt-get install chromium chromium-driver; .ci/install does)");
    let driver = Driver(child, port);
    integration::wait_until("chromedriver listens", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-background-networking",
                     "--disable-dev-shm-usage", "--disable-gpu"],
        }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("starting headless Chromium through chromedriver")
}

/// Evaluate `script` (a function body returning a value) in the page until `done` holds for
/// its value; the last value.
async fn until(page: &Client, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = page.execute(script, vec![]).await.unwrap_or(Value::Null);
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed {what}; last: {value}\n{}",
            page.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The text of the first element matching `selector`, or null.
fn text_of(selector: &str) -> String {
    format!("const e = document.querySelector({selector:?}); return e ? e.textContent : null;")
}

/// The watt-hours in a text such as `1.234 Wh`.
fn wh(value: &Value) -> f64 {
    value
        .as_str()
        .and_then(|t| t.trim_end_matches(" Wh").parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_outlets_live_and_the_admin_revokes_a_cable() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Two outlets; a constant 500 W load at twice real time: a quota of 8 Wh lasts ~29 s.
    let setup = SocketSetup {
        outlets: 2,
        time_scale: 2.0,
        load_toml: "kind = \"constant\"\npower_w = 500.0".into(),
        ..SocketSetup::default()
    };
    let socket = tokio::task::block_in_place(|| {
        SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap()
    });
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            max_session_sat: 5_000,
            ..CableSetup::default()
        },
        Amount::from_sat(100_000),
    )
    .unwrap();
    let mut run = cable.spawn_run().unwrap();
    let (read_only, admin) = (
        token(&socket, "readonly.token"),
        token(&socket, "admin.token"),
    );

    // The API refuses a call without a token or with a wrong one.
    let (status, body) = request(
        "GET",
        &format!("{}/api/v1/outlets", socket.http),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = request(
        "GET",
        &format!("{}/metrics", socket.http),
        Some(&"0".repeat(64)),
        None,
    )
    .await;
    assert_eq!(status, 401);

    let driver = chromedriver();
    let page = browser(&driver).await;

    // Without a token: refused, no data shown.
    page.goto(&format!("{}/", socket.http)).await.unwrap();
    let error = until(&page, "the refusal", &text_of("#error"), |v| {
        v.as_str().is_some_and(|t| t.contains("refused"))
    })
    .await;
    assert!(error.as_str().unwrap().contains("no token"), "{error}");
    let hidden = page
        .execute("return document.getElementById('dashboard').hidden", vec![])
        .await
        .unwrap();
    assert_eq!(hidden, Value::Bool(true));

    // A wrong token: refused by the API.
    page.goto("about:blank").await.unwrap();
    page.goto(&format!("{}/#token={}", socket.http, "0".repeat(64)))
        .await
        .unwrap();
    until(
        &page,
        "the refusal of a wrong token",
        &text_of("#error"),
        |v| v.as_str().is_some_and(|t| t.contains("not valid")),
    )
    .await;

    // The read-only token: both outlets, the live session's energy rising, its payment, the
    // cable, and no revoke button.
    page.goto("about:blank").await.unwrap();
    page.goto(&format!("{}/#token={read_only}", socket.http))
        .await
        .unwrap();
    until(&page, "signed in read-only", &text_of("#scope"), |v| {
        v.as_str().is_some_and(|t| t.contains("read-only"))
    })
    .await;
    let outlets = until(
        &page,
        "two outlets",
        "return [...document.querySelectorAll('#outlets .outlet')].map(e => e.dataset.outletId)",
        |v| v.as_array().is_some_and(|a| a.len() == 2),
    )
    .await;
    assert_eq!(outlets, json!(["outlet-1", "outlet-2"]));
    let energy = text_of(".outlet[data-outlet-id='outlet-1'] .energy");
    let first = until(&page, "energy flowing on outlet-1", &energy, |v| {
        wh(v) > 0.0
    })
    .await;
    let later = until(&page, "the energy rising", &energy, |v| {
        wh(v) > wh(&first) + 0.05
    })
    .await;
    assert!(wh(&later) > wh(&first));
    let state = page
        .execute(&text_of(".outlet[data-outlet-id='outlet-1'] h3"), vec![])
        .await
        .unwrap();
    assert_eq!(state, json!("outlet-1: paid"));
    let idle = page
        .execute(&text_of(".outlet[data-outlet-id='outlet-2'] h3"), vec![])
        .await
        .unwrap();
    assert_eq!(idle, json!("outlet-2: standby"));
    let payment = until(
        &page,
        "the session's payment",
        "return [...document.querySelectorAll('#payments tbody tr')].map(r => r.textContent)",
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    )
    .await;
    assert!(
        payment[0].as_str().unwrap().contains("onchain"),
        "{payment}"
    );
    let cable_key = until(
        &page,
        "the paying cable among the devices",
        "return [...document.querySelectorAll('#devices tr.device')].map(r => r.dataset.key)",
        |v| v.as_array().is_some_and(|a| a.len() == 1),
    )
    .await[0]
        .as_str()
        .unwrap()
        .to_owned();
    // T2T_DASHBOARD_SCREENSHOT=file.png keeps a picture of the page as the read-only owner
    // sees it.
    if let Ok(path) = std::env::var("T2T_DASHBOARD_SCREENSHOT") {
        page.set_window_size(1400, 2000).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        std::fs::write(path, page.screenshot().await.unwrap()).unwrap();
    }
    assert_eq!(
        page.find_all(Locator::Css("button.revoke"))
            .await
            .unwrap()
            .len(),
        0,
        "the read-only token must not see a revoke button"
    );
    // Nor can it revoke through the API.
    let revoke_url = format!("{}/api/v1/devices/{cable_key}/revoke", socket.http);
    let (status, body) = request(
        "POST",
        &revoke_url,
        Some(&read_only),
        Some(json!({"reason": "no"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // The admin token: the revoke button works.
    page.goto("about:blank").await.unwrap();
    page.goto(&format!("{}/#token={admin}", socket.http))
        .await
        .unwrap();
    until(&page, "signed in as admin", &text_of("#scope"), |v| {
        v.as_str().is_some_and(|t| t.contains("admin"))
    })
    .await;
    until(
        &page,
        "the revoke button",
        "return document.querySelectorAll('button.revoke').length",
        |v| v == &json!(1),
    )
    .await;
    page.find(Locator::Css("button.revoke"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page.send_alert_text("stolen cable").await.unwrap();
    page.accept_alert().await.unwrap();
    until(
        &page,
        "the cable revoked",
        &text_of("#devices tr.device .status"),
        |v| v == &json!("revoked"),
    )
    .await;
    // Its session halted: the outlet locked out, the cable stopped paying.
    until(
        &page,
        "outlet-1 locked out",
        &text_of(".outlet[data-outlet-id='outlet-1'] h3"),
        |v| v == &json!("outlet-1: lockout"),
    )
    .await;
    let reason = page
        .execute(&text_of("#devices tr.device td:nth-child(8)"), vec![])
        .await
        .unwrap();
    assert_eq!(reason, json!("revoked by the operator: stolen cable"));
    let audit = page
        .execute(&text_of("#audit tbody tr"), vec![])
        .await
        .unwrap();
    assert!(audit.as_str().unwrap().contains("revoked"), "{audit}");
    page.close().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while run.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the revoked cable did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its next session is refused at opening, with the reason.
    let again = tokio::task::block_in_place(|| cable.run(Duration::from_secs(120)).unwrap());
    let log = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(
        log.contains("revoked by the operator: stolen cable"),
        "the revoked cable's new session was not refused with the reason:\n{log}"
    );
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_scraped_after_a_session_say_what_the_store_says() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = tokio::task::block_in_place(|| {
        SocketProcess::start(
            &bitcoind,
            &dir.path().join("socket"),
            &SocketSetup::default(),
        )
        .unwrap()
    });
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            max_session_sat: 2_000,
            ..CableSetup::default()
        },
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = tokio::task::block_in_place(|| cable.run(Duration::from_secs(120)).unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The socket ends the session once the cable is gone (the link's debounce).
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    integration::wait_until("the session ended", Duration::from_secs(30), || {
        db.query_row(
            "SELECT COUNT(*) FROM sessions WHERE ended_at_unix_ms IS NOT NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    });
    let (energy_mwh, revenue_sat, payments): (i64, i64, i64) = db
        .query_row(
            "SELECT (SELECT SUM(energy_used_mwh) FROM sessions),
                    (SELECT SUM(amount_sat) FROM payments WHERE status NOT IN ('failed', 'lost')),
                    (SELECT COUNT(*) FROM payments WHERE status NOT IN ('failed', 'lost'))",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(payments, 2);
    assert!(energy_mwh > 0);

    let (status, text) = request(
        "GET",
        &format!("{}/metrics", socket.http),
        Some(&token(&socket, "readonly.token")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let labels = r#"{outlet="outlet-1",scheme="onchain"}"#;
    assert_eq!(
        sample(&text, &format!("t2t_energy_sold_wh_total{labels}")),
        energy_mwh as f64 / 1_000.0
    );
    assert_eq!(
        sample(&text, &format!("t2t_revenue_sat_total{labels}")),
        revenue_sat as f64
    );
    assert_eq!(sample(&text, &format!("t2t_payments_total{labels}")), 2.0);
    assert_eq!(sample(&text, &format!("t2t_sessions_total{labels}")), 1.0);
    assert_eq!(
        sample(&text, &format!("t2t_payments_lost_total{labels}")),
        0.0
    );
    // Measured as they happened: both payments checked, bitcoind answered.
    assert_eq!(
        sample(
            &text,
            r#"t2t_payment_check_seconds_count{scheme="onchain"}"#
        ),
        2.0
    );
    assert!(
        sample(
            &text,
            r#"t2t_bitcoind_rpc_seconds_count{method="testmempoolaccept"}"#
        ) >= 2.0
    );
    assert!(text.ends_with("# EOF\n"));
    // The liveness probe needs no token.
    let (status, body) = request("GET", &format!("{}/healthz", socket.http), None, None).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}
