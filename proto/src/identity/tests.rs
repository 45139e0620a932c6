//! Unit tests of signed offers, statuses and certificates, and the test vectors of every
//! t2t signature (`proto/testvectors/signatures.json`, rewritten by `T2T_WRITE_TESTVECTORS=1`).
use super::*;
use bitcoin::hex::{DisplayHex, FromHex};
use serde_json::{json, Value};

use crate::request_auth;

const VECTORS: &str = "testvectors/signatures.json";

fn secret(byte: u8) -> SecretKey {
    SecretKey::from_slice(&[byte; 32]).unwrap()
}

fn public(byte: u8) -> Vec<u8> {
    secret(byte)
        .public_key(&Secp256k1::signing_only())
        .serialize()
        .to_vec()
}

fn offer() -> v1::Offer {
    v1::Offer {
        socket_identity_key: public(0x11),
        outlet_id: "outlet-1".into(),
        network: v1::Network::Regtest as i32,
        price_msat_per_wh: 125_000,
        quota_mwh: 8_000,
        schemes: vec![v1::SchemeTerms {
            scheme: v1::Scheme::Onchain as i32,
            min_payment_sat: 546,
            min_fee_rate_sat_per_vb: 2,
            terms: Some(v1::scheme_terms::Terms::Onchain(v1::OnchainOfferTerms {})),
        }],
        payout_script: Vec::from_hex("0014751e76e8199196d454941c45d1b3a323f1433bd6").unwrap(),
        cable_nonce: vec![0x42; 32],
    }
}

fn report() -> v1::StatusReport {
    v1::StatusReport {
        socket_identity_key: public(0x11),
        outlet_id: "outlet-1".into(),
        session_hash: session_hash("5e55"),
        state: v1::OutletState::Paid as i32,
        energy_used_mwh: 12_500,
        quota_remaining_mwh: 3_500,
        payments: 2,
        sequence: 1_795_000_000_000,
        time_unix_ms: 1_795_000_000_000,
    }
}

fn body() -> v1::CertificateBody {
    v1::CertificateBody {
        operator_key: public(0x22),
        socket_identity_key: public(0x11),
        outlet_ids: vec!["outlet-1".into(), "outlet-2".into()],
        expires_at_unix_secs: 1_900_000_000,
    }
}

/// A signature without auxiliary randomness (BIP 340 allows any aux; fixed for vectors).
fn deterministic(digest: [u8; 32], secret: &SecretKey) -> Vec<u8> {
    let secp = Secp256k1::signing_only();
    secp.sign_schnorr_no_aux_rand(
        &Message::from_digest(digest),
        &Keypair::from_secret_key(&secp, secret),
    )
    .as_ref()
    .to_vec()
}

fn vectors() -> Value {
    // Requests are addressed to the socket of the offer vector, on regtest.
    let to = request_auth::Recipient {
        socket_identity_key: PublicKey::from_slice(&public(0x11)).unwrap(),
        network: v1::Network::Regtest,
    };
    let elsewhere = request_auth::Recipient {
        socket_identity_key: PublicKey::from_slice(&public(0x12)).unwrap(),
        ..to
    };
    let offer_bytes = offer().encode_to_vec();
    let offer_hash = offer_hash(&offer_bytes).to_byte_array();
    let offer_sig = deterministic(offer_hash, &secret(0x11));
    let body_bytes = body().encode_to_vec();
    let cert_hash = cert_hash(&body_bytes).to_byte_array();
    let cert_sig = deterministic(cert_hash, &secret(0x22));
    let registry_bytes = v1::RegistryBody {
        operator_key: public(0x22),
        issued_at_unix_secs: 1_795_000_000,
        entries: vec![v1::RegistryEntry {
            identity_key: public(0x77),
            role: "cable".into(),
            status: "revoked".into(),
            reason: "stolen".into(),
            profile: Some(v1::DeviceProfile {
                max_power_w: 1_300,
                max_energy_per_session_wh: 40,
            }),
        }],
    }
    .encode_to_vec();
    let registry_hash = crate::registry::RegistryHash::hash(&registry_bytes).to_byte_array();
    let registry_sig = deterministic(registry_hash, &secret(0x22));
    let receipt_bytes = v1::ReceiptBody {
        cable_identity_key: public(0x33),
        session_id: "5e55".into(),
        socket_status: Some(v1::SignedStatus {
            report: report().encode_to_vec(),
            signature: deterministic(
                status_hash(&report().encode_to_vec()).to_byte_array(),
                &secret(0x11),
            ),
        }),
        cable_metered: true,
        cable_energy_mwh: 12_300,
        time_unix_ms: 1_795_000_000_400,
    }
    .encode_to_vec();
    let receipt_hash = crate::receipt::receipt_hash(&receipt_bytes).to_byte_array();
    let receipt_sig = deterministic(receipt_hash, &secret(0x33));
    let mut tampered_receipt = receipt_bytes.clone();
    *tampered_receipt.last_mut().unwrap() ^= 1;
    let request = v1::PayTransactionRequest {
        session_id: "5e55".into(),
        payment_id: 2,
        psbt: vec![0x70, 0x73, 0x62, 0x74, 0xff],
        auth: None,
    };
    let body = request_auth::body_sha256(&request);
    let request_hash = request_auth::request_hash(
        &to,
        &request.session_id,
        "/t2t.v1.Socket/PayTransaction",
        7,
        &body,
    )
    .to_byte_array();
    let request_sig = deterministic(request_hash, &secret(0x33));
    // An opening request: no session id, the payout script of the offer the cable took.
    let opening = v1::PowerRequestRequest {
        outlet_id: "outlet-1".into(),
        scheme: v1::Scheme::Onchain as i32,
        offer_payout_script: offer().payout_script,
        ..Default::default()
    };
    let opening_body = request_auth::body_sha256(&opening);
    let opening_hash = request_auth::request_hash(
        &to,
        "",
        "/t2t.v1.Socket/PowerRequest",
        1_795_000_000_000,
        &opening_body,
    )
    .to_byte_array();
    let opening_sig = deterministic(opening_hash, &secret(0x33));
    // A signed WatchStatus: the stream that is the cable's presence at the outlet.
    let watch = v1::WatchStatusRequest {
        outlet_id: "outlet-1".into(),
        auth: None,
    };
    let watch_body = request_auth::body_sha256(&watch);
    let watch_hash = request_auth::request_hash(
        &to,
        "",
        "/t2t.v1.Socket/WatchStatus",
        1_795_000_000_001,
        &watch_body,
    )
    .to_byte_array();
    let watch_sig = deterministic(watch_hash, &secret(0x33));
    let report_bytes = report().encode_to_vec();
    let status_hash = status_hash(&report_bytes).to_byte_array();
    let status_sig = deterministic(status_hash, &secret(0x11));
    let mut tampered = offer_bytes.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let mut tampered_report = report_bytes.clone();
    *tampered_report.last_mut().unwrap() ^= 1;
    json!({
        "about": "Signatures of t2t.v1 (socket.proto GetOfferResponse, RequestAuth, SignedStatus, SocketCertificate, MeteringReceipt; operator.proto SignedRegistry): BIP 340 Schnorr by the x-only form of the 33-byte key, over the BIP 340 tagged hash SHA256(SHA256(tag) || SHA256(tag) || message_hex bytes) with tag \"t2t/offer\", \"t2t/request\", \"t2t/status\", \"t2t/cert\", \"t2t/registry\" or \"t2t/receipt\". For t2t/offer, t2t/status, t2t/cert, t2t/registry and t2t/receipt, message_hex is the exact protobuf encoding carried (GetOfferResponse.offer, SignedStatus.report, SocketCertificate.body, SignedRegistry.body, MeteringReceipt.body); decode it, never re-encode it. For t2t/request (PowerRequest, PayTransaction, OpenChannel, FundChannel, EndSession, and WatchStatus when signed), message_hex is (encoding version 2) the byte 0x02 || the socket identity key the request is addressed to (33 bytes: the Offer vector's key, public_key_hex of its vector) || u32-BE Network enum number (4 = NETWORK_REGTEST) || u32-BE len(session_id) || session_id || u32-BE len(method) || method || u64-BE sequence || SHA256(body_hex bytes), body_hex being the request encoded with auth unset (body_sha256_hex its hash). The signatures here were made without auxiliary randomness; real ones use fresh aux randomness and differ: verify, do not compare. secret_key_hex is given to reproduce them.",
        "session_hash": {
            "about": "GetStatusResponse.session_hash and StatusReport.session_hash: SHA256 (single, untagged) of the session id's UTF-8 bytes; empty bytes for no session",
            "session_id": "5e55",
            "session_hash_hex": session_hash("5e55").to_lower_hex_string()
        },
        "vectors": [
            {
                "tag": "t2t/offer",
                "message": "Offer",
                "secret_key_hex": ([0x11u8; 32]).to_lower_hex_string(),
                "public_key_hex": public(0x11).to_lower_hex_string(),
                "message_hex": offer_bytes.to_lower_hex_string(),
                "tagged_hash_hex": offer_hash.to_lower_hex_string(),
                "signature_hex": offer_sig.to_lower_hex_string(),
                "valid": true
            },
            {
                "tag": "t2t/offer",
                "message": "Offer, last byte changed after signing",
                "public_key_hex": public(0x11).to_lower_hex_string(),
                "message_hex": tampered.to_lower_hex_string(),
                "signature_hex": offer_sig.to_lower_hex_string(),
                "valid": false
            },
            {
                "tag": "t2t/request",
                "socket_identity_key_hex": public(0x11).to_lower_hex_string(),
                "network": "NETWORK_REGTEST",
                "message": "PayTransactionRequest {session_id \"5e55\", payment_id 2, psbt 70736274ff} with auth unset (body_hex); method /t2t.v1.Socket/PayTransaction, sequence 7",
                "secret_key_hex": ([0x33u8; 32]).to_lower_hex_string(),
                "public_key_hex": public(0x33).to_lower_hex_string(),
                "body_hex": request.encode_to_vec().to_lower_hex_string(),
                "body_sha256_hex": body.to_lower_hex_string(),
                "message_hex": request_auth::request_message(&to, "5e55", "/t2t.v1.Socket/PayTransaction", 7, &body).to_lower_hex_string(),
                "tagged_hash_hex": request_hash.to_lower_hex_string(),
                "signature_hex": request_sig.to_lower_hex_string(),
                "valid": true
            },
            {
                "tag": "t2t/request",
                "socket_identity_key_hex": public(0x11).to_lower_hex_string(),
                "network": "NETWORK_REGTEST",
                "message": "PowerRequestRequest opening a session {outlet_id \"outlet-1\", scheme SCHEME_ONCHAIN, session_id empty, offer_payout_script = the Offer vector's payout_script} with auth unset (body_hex); method /t2t.v1.Socket/PowerRequest, sequence 1795000000000 (a clock's milliseconds)",
                "secret_key_hex": ([0x33u8; 32]).to_lower_hex_string(),
                "public_key_hex": public(0x33).to_lower_hex_string(),
                "body_hex": opening.encode_to_vec().to_lower_hex_string(),
                "body_sha256_hex": opening_body.to_lower_hex_string(),
                "message_hex": request_auth::request_message(&to, "", "/t2t.v1.Socket/PowerRequest", 1_795_000_000_000, &opening_body).to_lower_hex_string(),
                "tagged_hash_hex": opening_hash.to_lower_hex_string(),
                "signature_hex": opening_sig.to_lower_hex_string(),
                "valid": true
            },
            {
                "tag": "t2t/request",
                "socket_identity_key_hex": public(0x11).to_lower_hex_string(),
                "network": "NETWORK_REGTEST",
                "message": "WatchStatusRequest {outlet_id \"outlet-1\"} with auth unset (body_hex); session_id empty, method /t2t.v1.Socket/WatchStatus, sequence 1795000000001: the stream that is the cable's presence (socket.proto WatchStatusRequest.auth)",
                "secret_key_hex": ([0x33u8; 32]).to_lower_hex_string(),
                "public_key_hex": public(0x33).to_lower_hex_string(),
                "body_hex": watch.encode_to_vec().to_lower_hex_string(),
                "body_sha256_hex": watch_body.to_lower_hex_string(),
                "message_hex": request_auth::request_message(&to, "", "/t2t.v1.Socket/WatchStatus", 1_795_000_000_001, &watch_body).to_lower_hex_string(),
                "tagged_hash_hex": watch_hash.to_lower_hex_string(),
                "signature_hex": watch_sig.to_lower_hex_string(),
                "valid": true
            },
            {
                "tag": "t2t/request",
                "socket_identity_key_hex": public(0x12).to_lower_hex_string(),
                "network": "NETWORK_REGTEST",
                "message": "The PayTransactionRequest vector's signature, the message addressed to another socket (a captured request played elsewhere)",
                "public_key_hex": public(0x33).to_lower_hex_string(),
                "body_hex": request.encode_to_vec().to_lower_hex_string(),
                "message_hex": request_auth::request_message(&elsewhere, "5e55", "/t2t.v1.Socket/PayTransaction", 7, &body).to_lower_hex_string(),
                "signature_hex": request_sig.to_lower_hex_string(),
                "valid": false
            },
            {
                "tag": "t2t/status",
                "message": "StatusReport of outlet-1 in Paid, session_hash = SHA256(\"5e55\")",
                "secret_key_hex": ([0x11u8; 32]).to_lower_hex_string(),
                "public_key_hex": public(0x11).to_lower_hex_string(),
                "message_hex": report_bytes.to_lower_hex_string(),
                "tagged_hash_hex": status_hash.to_lower_hex_string(),
                "signature_hex": status_sig.to_lower_hex_string(),
                "valid": true
            },
            {
                "tag": "t2t/status",
                "message": "StatusReport, last byte changed after signing",
                "public_key_hex": public(0x11).to_lower_hex_string(),
                "message_hex": tampered_report.to_lower_hex_string(),
                "signature_hex": status_sig.to_lower_hex_string(),
                "valid": false
            },
            {
                "tag": "t2t/cert",
                "message": "CertificateBody",
                "secret_key_hex": ([0x22u8; 32]).to_lower_hex_string(),
                "public_key_hex": public(0x22).to_lower_hex_string(),
                "message_hex": body_bytes.to_lower_hex_string(),
                "tagged_hash_hex": cert_hash.to_lower_hex_string(),
                "signature_hex": cert_sig.to_lower_hex_string(),
                "valid": true
            },
            {
                "tag": "t2t/registry",
                "message": "RegistryBody (operator.proto SignedRegistry.body)",
                "secret_key_hex": ([0x22u8; 32]).to_lower_hex_string(),
                "public_key_hex": public(0x22).to_lower_hex_string(),
                "message_hex": registry_bytes.to_lower_hex_string(),
                "tagged_hash_hex": registry_hash.to_lower_hex_string(),
                "signature_hex": registry_sig.to_lower_hex_string(),
                "valid": true
            },
            {
                "tag": "t2t/receipt",
                "message": "ReceiptBody (socket.proto MeteringReceipt.body) of session \"5e55\": the t2t/status vector above as socket_status, cable_energy_mwh 12300",
                "secret_key_hex": ([0x33u8; 32]).to_lower_hex_string(),
                "public_key_hex": public(0x33).to_lower_hex_string(),
                "message_hex": receipt_bytes.to_lower_hex_string(),
                "tagged_hash_hex": receipt_hash.to_lower_hex_string(),
                "signature_hex": receipt_sig.to_lower_hex_string(),
                "valid": true
            },
            {
                "tag": "t2t/receipt",
                "message": "ReceiptBody, last byte changed after signing",
                "public_key_hex": public(0x33).to_lower_hex_string(),
                "message_hex": tampered_receipt.to_lower_hex_string(),
                "signature_hex": receipt_sig.to_lower_hex_string(),
                "valid": false
            }
        ]
    })
}

/// The vectors file is what this code computes (`T2T_WRITE_TESTVECTORS=1` rewrites it),
/// and every vector verifies (or not) as it says.
#[test]
fn the_test_vectors_hold() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(VECTORS);
    let computed = vectors();
    if std::env::var_os("T2T_WRITE_TESTVECTORS").is_some() {
        let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(stored, computed, "{VECTORS} is stale");
    let hashed = &stored["session_hash"];
    assert_eq!(
        session_hash(hashed["session_id"].as_str().unwrap()).to_lower_hex_string(),
        hashed["session_hash_hex"].as_str().unwrap()
    );
    for v in stored["vectors"].as_array().unwrap() {
        let hex = |k: &str| Vec::from_hex(v[k].as_str().unwrap()).unwrap();
        let message = hex("message_hex");
        let digest = match v["tag"].as_str().unwrap() {
            "t2t/offer" => offer_hash(&message).to_byte_array(),
            "t2t/request" => request_auth::RequestHash::hash(&message).to_byte_array(),
            "t2t/status" => super::status_hash(&message).to_byte_array(),
            "t2t/registry" => crate::registry::RegistryHash::hash(&message).to_byte_array(),
            "t2t/receipt" => crate::receipt::receipt_hash(&message).to_byte_array(),
            _ => cert_hash(&message).to_byte_array(),
        };
        let key = PublicKey::from_slice(&hex("public_key_hex")).unwrap();
        let ok = verify(digest, &hex("signature_hex"), &key, "vector").is_ok();
        assert_eq!(ok, v["valid"].as_bool().unwrap(), "{v}");
    }
}

#[test]
fn an_offer_verifies_only_as_signed_and_for_its_request() {
    let signed = sign_offer(&offer(), &keypair(&secret(0x11)), vec![]);
    assert_eq!(
        verify_offer(&signed, "outlet-1", &[0x42; 32]).unwrap(),
        offer()
    );
    assert!(matches!(
        verify_offer(&signed, "outlet-1", &[0x43; 32]),
        Err(IdentityError::NotOurs(_))
    ));
    assert!(matches!(
        verify_offer(&signed, "outlet-2", &[0x42; 32]),
        Err(IdentityError::NotOurs(_))
    ));
    // Signed by another key than the one it names.
    let forged = sign_offer(&offer(), &keypair(&secret(0x33)), vec![]);
    assert_eq!(
        verify_offer(&forged, "outlet-1", &[0x42; 32]),
        Err(IdentityError::Signature("offer"))
    );
    let mut garbage = signed.clone();
    garbage.offer = vec![0xff; 3];
    assert!(matches!(
        verify_offer(&garbage, "outlet-1", &[0x42; 32]),
        Err(IdentityError::Decode { .. })
    ));
    let mut short = signed;
    short.signature.pop();
    assert!(verify_offer(&short, "outlet-1", &[0x42; 32]).is_err());
}

#[test]
fn a_status_verifies_only_as_signed_by_its_socket_for_its_outlet() {
    let socket = PublicKey::from_slice(&public(0x11)).unwrap();
    let signed = sign_status(&report(), &keypair(&secret(0x11)));
    assert_eq!(
        verify_status(&signed, &socket, "outlet-1").unwrap(),
        report()
    );
    assert!(matches!(
        verify_status(&signed, &socket, "outlet-2"),
        Err(IdentityError::NotOurs(_))
    ));
    let other = PublicKey::from_slice(&public(0x12)).unwrap();
    assert!(matches!(
        verify_status(&signed, &other, "outlet-1"),
        Err(IdentityError::NotOurs(_))
    ));
    // Signed by another key than the one it names.
    let forged = sign_status(&report(), &keypair(&secret(0x33)));
    assert_eq!(
        verify_status(&forged, &socket, "outlet-1"),
        Err(IdentityError::Signature("status report"))
    );
    let mut changed = signed;
    *changed.report.last_mut().unwrap() ^= 1;
    assert!(verify_status(&changed, &socket, "outlet-1").is_err());
    assert_eq!(session_hash(""), Vec::<u8>::new());
    assert_eq!(
        session_hash("abc").to_lower_hex_string(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn a_certificate_vouches_only_for_its_socket_outlets_and_time() {
    let operator = PublicKey::from_slice(&public(0x22)).unwrap();
    let certificate = certify(&body(), &secret(0x22));
    let check = |key: &[u8], outlet: &str, now: u64, trusted: &[PublicKey]| {
        verify_certificate(
            std::slice::from_ref(&certificate),
            key,
            outlet,
            now,
            trusted,
        )
    };
    let socket = public(0x11);
    assert_eq!(check(&socket, "outlet-2", 1_000, &[operator]), Ok(operator));
    assert!(check(&socket, "outlet-3", 1_000, &[operator]).is_err());
    assert!(check(&public(0x12), "outlet-1", 1_000, &[operator]).is_err());
    assert!(check(&socket, "outlet-1", 1_900_000_000, &[operator]).is_err());
    assert!(check(&socket, "outlet-1", 1_000, &[]).is_err());
    // Signed by someone else than the operator it names.
    let forged = certify(&body(), &secret(0x23));
    assert!(verify_certificate(&[forged], &socket, "outlet-1", 1_000, &[operator]).is_err());
    // The file form reads back.
    let dir = std::env::temp_dir().join(format!("t2t-cert-{}", std::process::id()));
    std::fs::write(
        &dir,
        serde_json::to_string(&CertificateFile::of(&certificate)).unwrap(),
    )
    .unwrap();
    assert_eq!(CertificateFile::read(&dir).unwrap(), certificate);
    let _ = std::fs::remove_file(&dir);
}
