//! Identities and what they sign (design.md "Trust"; seed 004 asks each device to prove who it
//! is). Every signature is BIP 340 Schnorr by a device's key over the BIP 340 tagged hash of the
//! *exact bytes* of a protobuf-encoded message carried beside it, so no side ever re-encodes
//! what it checks and implementations in other languages need no canonical encoding:
//!
//! - an [`v1::Offer`] in `GetOfferResponse.offer`, tag `t2t/offer`, by the socket identity key,
//!   answering the cable's nonce ([`sign_offer`], [`verify_offer`]);
//! - a request that changes a session, tag `t2t/request`, by the cable identity key over the
//!   socket it is addressed to, its session, method, sequence and body
//!   ([`crate::request_auth`]);
//! - a [`v1::CertificateBody`] in `SocketCertificate.body`, tag `t2t/cert`, by an operator key
//!   ([`certify`], [`verify_certificate`]);
//! - a [`v1::StatusReport`] in `SignedStatus.report`, tag `t2t/status`, by the socket identity
//!   key: the outlet's state, the session's cumulative energy and quota left, a sequence and a
//!   time ([`sign_status`], [`verify_status`]).
//!
//! Keys travel as 33-byte compressed secp256k1 keys; signatures verify against their x-only
//! form (BIP 340). Test vectors: `proto/testvectors/signatures.json`.

use bitcoin::hashes::{sha256t_hash_newtype, Hash};
use bitcoin::secp256k1::{schnorr, All, Keypair, Message, PublicKey, Secp256k1, SecretKey};
use prost::Message as _;

use crate::v1;

sha256t_hash_newtype! {
    /// Tag `t2t/offer`.
    pub struct OfferTag = hash_str("t2t/offer");
    /// BIP 340 tagged hash of an encoded [`v1::Offer`].
    pub struct OfferHash(_);

    /// Tag `t2t/cert`.
    pub struct CertTag = hash_str("t2t/cert");
    /// BIP 340 tagged hash of an encoded [`v1::CertificateBody`].
    pub struct CertHash(_);

    /// Tag `t2t/status`.
    pub struct StatusTag = hash_str("t2t/status");
    /// BIP 340 tagged hash of an encoded [`v1::StatusReport`].
    pub struct StatusHash(_);
}

/// Why a signed message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The signed bytes do not decode as the message they claim to be.
    #[error("the signed {what} does not decode: {reason}")]
    Decode {
        /// Which message.
        what: &'static str,
        /// The decoder's word.
        reason: String,
    },
    /// A key is not a 33-byte compressed secp256k1 public key.
    #[error("{what} is not a public key: {reason}")]
    Key {
        /// Which key.
        what: &'static str,
        /// Why not.
        reason: String,
    },
    /// The signature is not 64 bytes or does not verify.
    #[error("bad signature of the {0}")]
    Signature(&'static str),
    /// The message is about something else than asked: an offer for another nonce or outlet,
    /// a status of another socket or outlet, a receipt of another cable or session.
    #[error("not about this request: {0}")]
    NotOurs(String),
    /// No certificate vouches for the socket under the policy.
    #[error("certificate: {0}")]
    Certificate(String),
}

pub(crate) fn key_of(bytes: &[u8], what: &'static str) -> Result<PublicKey, IdentityError> {
    PublicKey::from_slice(bytes).map_err(|e| IdentityError::Key {
        what,
        reason: e.to_string(),
    })
}

/// One secp256k1 context for every signature and check: creating (and randomizing) a context
/// per call cost as much as the signature itself (a socket signs a status per watcher and
/// quarter second).
static SECP: std::sync::LazyLock<Secp256k1<All>> = std::sync::LazyLock::new(Secp256k1::new);

pub(crate) fn sign(digest: [u8; 32], keypair: &Keypair) -> Vec<u8> {
    SECP.sign_schnorr(&Message::from_digest(digest), keypair)
        .as_ref()
        .to_vec()
}

pub(crate) fn keypair(secret: &SecretKey) -> Keypair {
    Keypair::from_secret_key(&SECP, secret)
}

pub(crate) fn verify(
    digest: [u8; 32],
    signature: &[u8],
    key: &PublicKey,
    what: &'static str,
) -> Result<(), IdentityError> {
    let signature =
        schnorr::Signature::from_slice(signature).map_err(|_| IdentityError::Signature(what))?;
    SECP.verify_schnorr(
        &signature,
        &Message::from_digest(digest),
        &key.x_only_public_key().0,
    )
    .map_err(|_| IdentityError::Signature(what))
}

/// A certificate as a file: JSON `{"body_hex": "...", "signature_hex": "..."}` with the two
/// fields of a [`v1::SocketCertificate`] in hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// `SocketCertificate.body`, hex.
    pub body_hex: String,
    /// `SocketCertificate.signature`, hex.
    pub signature_hex: String,
}

impl CertificateFile {
    /// The file of `certificate`.
    pub fn of(certificate: &v1::SocketCertificate) -> Self {
        use bitcoin::hex::DisplayHex;
        CertificateFile {
            body_hex: certificate.body.to_lower_hex_string(),
            signature_hex: certificate.signature.to_lower_hex_string(),
        }
    }

    /// Write `certificate` as JSON to `path`.
    pub fn write(
        certificate: &v1::SocketCertificate,
        path: &std::path::Path,
    ) -> Result<(), std::io::Error> {
        let json = serde_json::to_string_pretty(&CertificateFile::of(certificate))
            .map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }

    /// Read the certificate of the JSON file at `path`. Its signature is checked by whoever
    /// trusts it, not here. Errors: unreadable file, bad JSON or hex.
    pub fn read(path: &std::path::Path) -> Result<v1::SocketCertificate, std::io::Error> {
        use bitcoin::hex::FromHex;
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let file: CertificateFile = serde_json::from_str(&std::fs::read_to_string(path)?)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(v1::SocketCertificate {
            body: Vec::from_hex(&file.body_hex).map_err(|e| invalid(e.to_string()))?,
            signature: Vec::from_hex(&file.signature_hex).map_err(|e| invalid(e.to_string()))?,
        })
    }
}

/// `TaggedHash("t2t/offer", offer_bytes)`.
pub fn offer_hash(offer_bytes: &[u8]) -> OfferHash {
    OfferHash::hash(offer_bytes)
}

/// `TaggedHash("t2t/cert", body_bytes)`.
pub fn cert_hash(body_bytes: &[u8]) -> CertHash {
    CertHash::hash(body_bytes)
}

/// `TaggedHash("t2t/status", report_bytes)`.
pub fn status_hash(report_bytes: &[u8]) -> StatusHash {
    StatusHash::hash(report_bytes)
}

/// How a status names its session without telling its id: SHA256 of the id's UTF-8 bytes
/// (`GetStatusResponse.session_hash`, `StatusReport.session_hash`); empty for no session.
pub fn session_hash(session_id: &str) -> Vec<u8> {
    if session_id.is_empty() {
        return Vec::new();
    }
    bitcoin::hashes::sha256::Hash::hash(session_id.as_bytes())
        .to_byte_array()
        .to_vec()
}

/// `report` encoded and signed by the socket's `identity` key pair (whose public key must be
/// `report.socket_identity_key`).
pub fn sign_status(report: &v1::StatusReport, identity: &Keypair) -> v1::SignedStatus {
    let bytes = report.encode_to_vec();
    let signature = sign(status_hash(&bytes).to_byte_array(), identity);
    v1::SignedStatus {
        report: bytes,
        signature,
    }
}

/// The cable's check of a signed status: decode the report from the exact bytes received,
/// check that it is signed by `socket_key` (the key of the offer it accepted) and is about
/// `outlet_id`. Returns the report.
///
/// Errors: [`IdentityError::Decode`], [`IdentityError::Signature`], [`IdentityError::NotOurs`]
/// (another socket's key or another outlet).
pub fn verify_status(
    signed: &v1::SignedStatus,
    socket_key: &PublicKey,
    outlet_id: &str,
) -> Result<v1::StatusReport, IdentityError> {
    let report =
        v1::StatusReport::decode(signed.report.as_slice()).map_err(|e| IdentityError::Decode {
            what: "status report",
            reason: e.to_string(),
        })?;
    if report.socket_identity_key != socket_key.serialize() {
        return Err(IdentityError::NotOurs(
            "the status names another socket key".into(),
        ));
    }
    verify(
        status_hash(&signed.report).to_byte_array(),
        &signed.signature,
        socket_key,
        "status report",
    )?;
    if report.outlet_id != outlet_id {
        return Err(IdentityError::NotOurs(format!(
            "status of outlet {:?}, not {outlet_id:?}",
            report.outlet_id
        )));
    }
    Ok(report)
}

/// The socket's reply to `GetOffer`: `offer` encoded and signed by the socket's `identity` key
/// pair (whose public key must be `offer.socket_identity_key`), with the socket's
/// `certificates`.
pub fn sign_offer(
    offer: &v1::Offer,
    identity: &Keypair,
    certificates: Vec<v1::SocketCertificate>,
) -> v1::GetOfferResponse {
    let bytes = offer.encode_to_vec();
    let signature = sign(offer_hash(&bytes).to_byte_array(), identity);
    v1::GetOfferResponse {
        offer: bytes,
        signature,
        certificates,
    }
}

/// The cable's check of a `GetOffer` reply to its request for `outlet_id` with `nonce`:
/// decode the offer from the exact bytes received, verify the socket's signature against the
/// identity key the offer names, and that the offer answers this request. Returns the offer.
/// Whether that key is one to trust is the caller's policy ([`verify_certificate`]).
///
/// Errors: [`IdentityError::Decode`], [`IdentityError::Key`], [`IdentityError::Signature`],
/// [`IdentityError::NotOurs`].
pub fn verify_offer(
    response: &v1::GetOfferResponse,
    outlet_id: &str,
    nonce: &[u8],
) -> Result<v1::Offer, IdentityError> {
    let offer =
        v1::Offer::decode(response.offer.as_slice()).map_err(|e| IdentityError::Decode {
            what: "offer",
            reason: e.to_string(),
        })?;
    let key = key_of(&offer.socket_identity_key, "the socket identity key")?;
    verify(
        offer_hash(&response.offer).to_byte_array(),
        &response.signature,
        &key,
        "offer",
    )?;
    if offer.cable_nonce != nonce {
        return Err(IdentityError::NotOurs("not our nonce".into()));
    }
    if offer.outlet_id != outlet_id {
        return Err(IdentityError::NotOurs(format!(
            "outlet {:?}, not {outlet_id:?}",
            offer.outlet_id
        )));
    }
    Ok(offer)
}

/// An operator's certificate of `body` (whose `operator_key` must be the public key of
/// `operator_secret`).
pub fn certify(body: &v1::CertificateBody, operator_secret: &SecretKey) -> v1::SocketCertificate {
    let bytes = body.encode_to_vec();
    let signature = sign(cert_hash(&bytes).to_byte_array(), &keypair(operator_secret));
    v1::SocketCertificate {
        body: bytes,
        signature,
    }
}

/// Whether one of `certificates` vouches for `socket_key` on `outlet_id` at `now_unix_secs`,
/// signed by one of `trusted_operators`. Returns the operator key that vouches.
///
/// Errors: [`IdentityError::Certificate`] saying why none does (the last reason found).
pub fn verify_certificate(
    certificates: &[v1::SocketCertificate],
    socket_key: &[u8],
    outlet_id: &str,
    now_unix_secs: u64,
    trusted_operators: &[PublicKey],
) -> Result<PublicKey, IdentityError> {
    let mut why = "no certificate".to_owned();
    for certificate in certificates {
        match check_one(
            certificate,
            socket_key,
            outlet_id,
            now_unix_secs,
            trusted_operators,
        ) {
            Ok(operator) => return Ok(operator),
            Err(e) => why = e.to_string(),
        }
    }
    Err(IdentityError::Certificate(why))
}

fn check_one(
    certificate: &v1::SocketCertificate,
    socket_key: &[u8],
    outlet_id: &str,
    now_unix_secs: u64,
    trusted_operators: &[PublicKey],
) -> Result<PublicKey, IdentityError> {
    let body = v1::CertificateBody::decode(certificate.body.as_slice()).map_err(|e| {
        IdentityError::Decode {
            what: "certificate",
            reason: e.to_string(),
        }
    })?;
    let operator = key_of(&body.operator_key, "the operator key")?;
    verify(
        cert_hash(&certificate.body).to_byte_array(),
        &certificate.signature,
        &operator,
        "certificate",
    )?;
    if !trusted_operators.contains(&operator) {
        return Err(IdentityError::Certificate(format!(
            "operator {operator} is not trusted"
        )));
    }
    if body.socket_identity_key != socket_key {
        return Err(IdentityError::Certificate(
            "it certifies another socket".into(),
        ));
    }
    if !body.outlet_ids.iter().any(|o| o == outlet_id) {
        return Err(IdentityError::Certificate(format!(
            "outlet {outlet_id:?} is not named"
        )));
    }
    if now_unix_secs >= body.expires_at_unix_secs {
        return Err(IdentityError::Certificate("expired".into()));
    }
    Ok(operator)
}

#[cfg(test)]
mod tests {
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
}
