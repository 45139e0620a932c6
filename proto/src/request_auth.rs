//! The cable's signature on every request that changes a session (design.md "Trust";
//! socket.proto `RequestAuth`): BIP 340 Schnorr by the cable identity key over the tagged hash
//! `TaggedHash("t2t/request", m)` of the request's [`Recipient`] (the socket identity key and
//! network it is addressed to), session, method, sequence and body. A request signed for one
//! socket, or one network, verifies at no other. Test vectors: `proto/testvectors/signatures.json`
//! (tag `t2t/request`).

use bitcoin::hashes::{sha256t_hash_newtype, Hash};
use bitcoin::secp256k1::{PublicKey, SecretKey};

use crate::identity::{key_of, keypair, sign, verify, IdentityError};
use crate::v1;

sha256t_hash_newtype! {
    /// Tag `t2t/request`.
    pub struct RequestTag = hash_str("t2t/request");
    /// BIP 340 tagged hash of a request's signed message ([`request_message`]).
    pub struct RequestHash(_);
}

/// The version byte that begins every signed request message (socket.proto `RequestAuth`).
/// Version 1 (the same message without the version byte, socket key and network) is no longer
/// accepted: it let a request captured at one socket be played at another with the same
/// outlet id.
pub const REQUEST_ENCODING_VERSION: u8 = 2;

/// The socket a request is addressed to: its identity key (the offer's `socket_identity_key`)
/// and its network. Both are inside the signed message, so a request verifies only at the
/// socket, and on the network, it was signed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipient {
    /// The socket identity key (33-byte compressed on the wire).
    pub socket_identity_key: PublicKey,
    /// The network of the offer.
    pub network: v1::Network,
}

impl Recipient {
    /// The recipient named by an offer (its `socket_identity_key` and `network`).
    ///
    /// Errors: [`IdentityError::Key`] for a key that is not a compressed secp256k1 key,
    /// [`IdentityError::NotOurs`] for an unknown or unspecified network.
    pub fn of_offer(offer: &v1::Offer) -> Result<Self, IdentityError> {
        let network = v1::Network::try_from(offer.network)
            .ok()
            .filter(|n| *n != v1::Network::Unspecified)
            .ok_or_else(|| IdentityError::NotOurs(format!("network {}", offer.network)))?;
        Ok(Recipient {
            socket_identity_key: key_of(&offer.socket_identity_key, "the socket identity key")?,
            network,
        })
    }
}

/// A request that changes a session and so carries a [`v1::RequestAuth`] (socket.proto).
pub trait SessionRequest: prost::Message + Clone + Default {
    /// Its gRPC method path, e.g. `/t2t.v1.Socket/PayTransaction`.
    const METHOD: &'static str;
    /// The session it changes; empty for a request that opens one.
    fn session_id(&self) -> &str;
    /// Its auth field.
    fn auth_mut(&mut self) -> &mut Option<v1::RequestAuth>;
}

macro_rules! session_request {
    ($($message:ty => $method:literal, $session:expr;)+) => {$(
        impl SessionRequest for $message {
            const METHOD: &'static str = $method;
            fn session_id(&self) -> &str {
                let session: fn(&Self) -> &str = $session;
                session(self)
            }
            fn auth_mut(&mut self) -> &mut Option<v1::RequestAuth> {
                &mut self.auth
            }
        }
    )+};
}

session_request! {
    v1::PowerRequestRequest => "/t2t.v1.Socket/PowerRequest", |r| &r.session_id;
    v1::PayTransactionRequest => "/t2t.v1.Socket/PayTransaction", |r| &r.session_id;
    v1::OpenChannelRequest => "/t2t.v1.Socket/OpenChannel", |_| "";
    v1::FundChannelRequest => "/t2t.v1.Socket/FundChannel", |r| &r.session_id;
    v1::EndSessionRequest => "/t2t.v1.Socket/EndSession", |r| &r.session_id;
    v1::WatchStatusRequest => "/t2t.v1.Socket/WatchStatus", |_| "";
}

/// The message m a request's signature covers (socket.proto `RequestAuth`, version 2):
/// [`REQUEST_ENCODING_VERSION`] (1 byte) ‖ the socket identity key (33 bytes, compressed) ‖
/// the network's `Network` enum number (u32-BE) ‖ u32-BE length ‖ `session_id` ‖ u32-BE length
/// ‖ `method` ‖ `sequence` u64-BE ‖ `body_sha256`.
pub fn request_message(
    to: &Recipient,
    session_id: &str,
    method: &str,
    sequence: u64,
    body_sha256: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(1 + 33 + 4 + 8 + session_id.len() + method.len() + 8 + 32);
    m.push(REQUEST_ENCODING_VERSION);
    m.extend_from_slice(&to.socket_identity_key.serialize());
    m.extend_from_slice(&(to.network as i32 as u32).to_be_bytes());
    m.extend_from_slice(&(session_id.len() as u32).to_be_bytes());
    m.extend_from_slice(session_id.as_bytes());
    m.extend_from_slice(&(method.len() as u32).to_be_bytes());
    m.extend_from_slice(method.as_bytes());
    m.extend_from_slice(&sequence.to_be_bytes());
    m.extend_from_slice(body_sha256);
    m
}

/// `TaggedHash("t2t/request", m)` of [`request_message`].
pub fn request_hash(
    to: &Recipient,
    session_id: &str,
    method: &str,
    sequence: u64,
    body_sha256: &[u8; 32],
) -> RequestHash {
    RequestHash::hash(&request_message(
        to,
        session_id,
        method,
        sequence,
        body_sha256,
    ))
}

/// SHA256 of `request` encoded with its auth unset.
pub(crate) fn body_sha256<R: SessionRequest>(request: &R) -> [u8; 32] {
    let mut body = request.clone();
    *body.auth_mut() = None;
    bitcoin::hashes::sha256::Hash::hash(&body.encode_to_vec()).to_byte_array()
}

/// Sign `request` for the socket `to` as the cable whose identity secret is `cable_secret`,
/// with `sequence` (strictly increasing per session): sets its auth.
pub fn sign_request<R: SessionRequest>(
    request: &mut R,
    to: &Recipient,
    cable_secret: &SecretKey,
    sequence: u64,
) {
    let hash = request_hash(
        to,
        request.session_id(),
        R::METHOD,
        sequence,
        &body_sha256(request),
    );
    let key = keypair(cable_secret);
    *request.auth_mut() = Some(v1::RequestAuth {
        cable_identity_key: key.public_key().serialize().to_vec(),
        sequence,
        signature: sign(hash.to_byte_array(), &key),
    });
}

/// The socket `to`'s stateless check of a request's auth: present, a valid key, a signature
/// by it over this request, session and method, addressed to `to`. Returns the cable key and
/// the sequence; whether the key is the session's and the sequence new is the caller's check
/// against its store.
///
/// Errors: [`IdentityError::Key`], [`IdentityError::Signature`] (also for a request signed
/// for another socket or network, or under encoding version 1).
pub fn verify_request<R: SessionRequest>(
    request: &R,
    to: &Recipient,
) -> Result<(PublicKey, u64), IdentityError> {
    let auth = request
        .clone()
        .auth_mut()
        .clone()
        .ok_or(IdentityError::Signature("request (it carries no auth)"))?;
    let key = key_of(&auth.cable_identity_key, "the cable identity key")?;
    let hash = request_hash(
        to,
        request.session_id(),
        R::METHOD,
        auth.sequence,
        &body_sha256(request),
    );
    verify(hash.to_byte_array(), &auth.signature, &key, "request")?;
    Ok((key, auth.sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> SecretKey {
        SecretKey::from_slice(&[byte; 32]).unwrap()
    }

    fn to(byte: u8, network: v1::Network) -> Recipient {
        Recipient {
            socket_identity_key: keypair(&secret(byte)).public_key(),
            network,
        }
    }

    #[test]
    fn a_request_verifies_only_unchanged_signed_by_its_key_and_at_its_socket() {
        let socket = to(0x11, v1::Network::Regtest);
        let mut request = v1::PayTransactionRequest {
            session_id: "s".into(),
            payment_id: 1,
            psbt: vec![1, 2, 3],
            auth: None,
        };
        assert!(verify_request(&request, &socket).is_err(), "no auth");
        sign_request(&mut request, &socket, &secret(0x33), 5);
        let (key, sequence) = verify_request(&request, &socket).unwrap();
        assert_eq!(key, keypair(&secret(0x33)).public_key());
        assert_eq!(sequence, 5);
        let mut other_payment = request.clone();
        other_payment.payment_id = 2;
        assert_eq!(
            verify_request(&other_payment, &socket),
            Err(IdentityError::Signature("request"))
        );
        let mut other_session = request.clone();
        other_session.session_id = "t".into();
        assert!(verify_request(&other_session, &socket).is_err());
        let mut other_sequence = request.clone();
        other_sequence.auth.as_mut().unwrap().sequence = 6;
        assert!(verify_request(&other_sequence, &socket).is_err());
        // The same fields and signature as another method's request do not verify.
        let as_fund = v1::FundChannelRequest {
            session_id: "s".into(),
            deposit_tx: vec![],
            auth: request.auth.clone(),
        };
        assert!(verify_request(&as_fund, &socket).is_err());
        // Played at another socket, or the same socket on another network: refused.
        assert!(verify_request(&request, &to(0x12, v1::Network::Regtest)).is_err());
        assert!(verify_request(&request, &to(0x11, v1::Network::Signet)).is_err());
    }

    #[test]
    fn a_request_signed_under_encoding_version_1_is_refused() {
        let socket = to(0x11, v1::Network::Regtest);
        let mut request = v1::EndSessionRequest {
            session_id: "s".into(),
            ..Default::default()
        };
        // Version 1: m without the version byte, socket key and network.
        let m = request_message(
            &socket,
            "s",
            v1::EndSessionRequest::METHOD,
            9,
            &body_sha256(&request),
        );
        let v1_hash = RequestHash::hash(&m[1 + 33 + 4..]);
        let cable = keypair(&secret(0x33));
        request.auth = Some(v1::RequestAuth {
            cable_identity_key: cable.public_key().serialize().to_vec(),
            sequence: 9,
            signature: sign(v1_hash.to_byte_array(), &cable),
        });
        assert_eq!(
            verify_request(&request, &socket),
            Err(IdentityError::Signature("request"))
        );
    }

    #[test]
    fn the_recipient_of_an_offer_needs_a_key_and_a_known_network() {
        let mut offer = v1::Offer {
            socket_identity_key: keypair(&secret(0x11)).public_key().serialize().to_vec(),
            network: v1::Network::Regtest as i32,
            ..Default::default()
        };
        assert_eq!(
            Recipient::of_offer(&offer).unwrap(),
            to(0x11, v1::Network::Regtest)
        );
        offer.network = 0;
        assert!(Recipient::of_offer(&offer).is_err());
        offer.network = 99;
        assert!(Recipient::of_offer(&offer).is_err());
        offer.network = v1::Network::Regtest as i32;
        offer.socket_identity_key.pop();
        assert!(Recipient::of_offer(&offer).is_err());
    }
}
