//! The cable's signature on every request that changes its session (design.md "Trust";
//! socket.proto `RequestAuth`): its identity key signs the socket it addresses (identity key
//! and network), the session, method, a sequence number and the request's body, so that
//! nobody else on the power-line link can act on its session, nor play its request at another
//! socket.

use std::sync::Mutex;

use bitcoin::secp256k1::SecretKey;
use proto::request_auth::{sign_request, Recipient, SessionRequest};
use wallet::sequence::HighWaterMark;

/// Signs requests with the cable's identity key and a strictly increasing sequence: the
/// clock's milliseconds, or one above the last used when the clock has not moved on. A
/// persistent signer ([`RequestSigner::persistent`]) also never goes below a high-water mark
/// kept in a file, so that a device without a real-time clock (a Raspberry Pi starts in 1970
/// until NTP answers) never signs a sequence a socket has seen, and refuses, again.
pub struct RequestSigner {
    secret: SecretKey,
    last_sequence: Mutex<u64>,
    /// Every sequence used is below this stored mark (a persistent signer).
    mark: Option<HighWaterMark>,
}

impl RequestSigner {
    /// A signer with the identity secret `secret` (seed path m/1017'/0'), its sequences from
    /// the clock only (tests, and tools that sign once).
    pub fn new(secret: SecretKey) -> Self {
        RequestSigner {
            secret,
            last_sequence: Mutex::new(0),
            mark: None,
        }
    }

    /// A signer whose sequences also stay above the high-water mark kept in the file `path`
    /// ([`HighWaterMark`]).
    ///
    /// Errors: an unreadable or malformed file.
    pub fn persistent(secret: SecretKey, path: std::path::PathBuf) -> std::io::Result<Self> {
        let mark = HighWaterMark::load(path)?;
        Ok(RequestSigner {
            secret,
            last_sequence: Mutex::new(mark.floor()),
            mark: Some(mark),
        })
    }

    /// The identity key that signs (33-byte compressed on the wire).
    pub fn public_key(&self) -> bitcoin::secp256k1::PublicKey {
        self.secret
            .public_key(&bitcoin::secp256k1::Secp256k1::signing_only())
    }

    /// `request` with its auth set: addressed to the socket `to` (from its verified offer,
    /// [`Recipient::of_offer`]) and signed with the next sequence.
    pub fn sign<R: SessionRequest>(&self, to: &Recipient, mut request: R) -> R {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let sequence = {
            let mut last = self
                .last_sequence
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *last = (*last + 1).max(now_ms);
            if let Some(mark) = &self.mark {
                mark.reserve(*last);
            }
            *last
        };
        sign_request(&mut request, to, &self.secret, sequence);
        request
    }

    /// The authentication of a keysend of `amount_msat` paying `record` with `payment_hash`
    /// (socket.proto `LightningOfferTerms.keysend`): the value of custom TLV
    /// `proto::lightning::SESSION_AUTH_TLV_TYPE`, 64 bytes.
    pub fn sign_keysend(
        &self,
        record: &proto::lightning::SessionRecord,
        amount_msat: u64,
        payment_hash: &[u8; 32],
    ) -> Vec<u8> {
        proto::lightning::sign_keysend(record, amount_msat, payment_hash, &self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1;

    fn socket() -> Recipient {
        Recipient {
            socket_identity_key: SecretKey::from_slice(&[0x11; 32])
                .unwrap()
                .public_key(&bitcoin::secp256k1::Secp256k1::signing_only()),
            network: v1::Network::Regtest,
        }
    }

    #[test]
    fn each_request_gets_a_higher_sequence_and_verifies() {
        let signer = RequestSigner::new(SecretKey::from_slice(&[4; 32]).unwrap());
        let mut last = 0;
        for _ in 0..100 {
            let request = signer.sign(
                &socket(),
                v1::EndSessionRequest {
                    session_id: "s".into(),
                    auth: None,
                    receipt: None,
                },
            );
            let (_, sequence) = proto::request_auth::verify_request(&request, &socket()).unwrap();
            assert!(sequence > last, "{sequence} after {last}");
            last = sequence;
        }
    }

    #[test]
    fn a_persistent_signer_never_repeats_a_sequence_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("request_sequence");
        let secret = SecretKey::from_slice(&[4; 32]).unwrap();
        let sequence_of = |signer: &RequestSigner| {
            let request = signer.sign(&socket(), v1::EndSessionRequest::default());
            proto::request_auth::verify_request(&request, &socket())
                .unwrap()
                .1
        };
        let first = RequestSigner::persistent(secret, path.clone()).unwrap();
        let used = sequence_of(&first);
        let mark: u64 = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        assert!(
            mark > used,
            "the mark {mark} is above what was used ({used})"
        );
        // A clock set back after a restart: the mark keeps the next sequence above.
        std::fs::write(&path, (u64::MAX / 2).to_string()).unwrap();
        let restarted = RequestSigner::persistent(secret, path.clone()).unwrap();
        assert!(sequence_of(&restarted) > u64::MAX / 2);
        std::fs::write(&path, "not a number").unwrap();
        assert!(RequestSigner::persistent(secret, path).is_err());
    }
}
