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
mod tests;
