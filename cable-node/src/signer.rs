//! The cable's signature on every request that changes its session (design.md "Trust";
//! socket.proto `RequestAuth`): its identity key signs the session, method, a sequence number
//! and the request's body, so that nobody else on the power-line link can act on its session.

use std::sync::Mutex;

use bitcoin::secp256k1::SecretKey;
use proto::identity::{sign_request, SessionRequest};

/// Signs requests with the cable's identity key and a strictly increasing sequence: the
/// clock's milliseconds, or one above the last used when the clock has not moved on, so that
/// no counter needs storing across restarts.
pub struct RequestSigner {
    secret: SecretKey,
    last_sequence: Mutex<u64>,
}

impl RequestSigner {
    /// A signer with the identity secret `secret` (seed path m/1017'/0').
    pub fn new(secret: SecretKey) -> Self {
        RequestSigner {
            secret,
            last_sequence: Mutex::new(0),
        }
    }

    /// The identity key that signs (33-byte compressed on the wire).
    pub fn public_key(&self) -> bitcoin::secp256k1::PublicKey {
        self.secret
            .public_key(&bitcoin::secp256k1::Secp256k1::signing_only())
    }

    /// `request` with its auth set: signed with the next sequence.
    pub fn sign<R: SessionRequest>(&self, mut request: R) -> R {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let sequence = {
            let mut last = self
                .last_sequence
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *last = (*last + 1).max(now_ms);
            *last
        };
        sign_request(&mut request, &self.secret, sequence);
        request
    }

    /// The authentication of a keysend paying `record` with `payment_hash` (socket.proto
    /// `LightningOfferTerms.keysend`): the value of custom TLV
    /// `proto::lightning::SESSION_AUTH_TLV_TYPE`, 64 bytes.
    pub fn sign_keysend(
        &self,
        record: &proto::lightning::SessionRecord,
        payment_hash: &[u8; 32],
    ) -> Vec<u8> {
        proto::lightning::sign_keysend(record, payment_hash, &self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1;

    #[test]
    fn each_request_gets_a_higher_sequence_and_verifies() {
        let signer = RequestSigner::new(SecretKey::from_slice(&[4; 32]).unwrap());
        let mut last = 0;
        for _ in 0..100 {
            let request = signer.sign(v1::EndSessionRequest {
                session_id: "s".into(),
                auth: None,
                receipt: None,
            });
            let (_, sequence) = proto::identity::verify_request(&request).unwrap();
            assert!(sequence > last, "{sequence} after {last}");
            last = sequence;
        }
    }
}
