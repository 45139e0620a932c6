//! Signatures over the deposit's input (BIP 143, `SIGHASH_ALL`) and the 2-of-2 witness that
//! finalizes a channel transaction.

use std::collections::HashMap;

use bitcoin::secp256k1::{self, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{ecdsa, Transaction};

use super::{Channel, Signer, SpillmanError};

impl Channel {
    /// The BIP 143 sighash (`SIGHASH_ALL`) of the deposit's input of `tx`.
    pub fn sighash(&self, tx: &Transaction) -> Result<Message, SpillmanError> {
        let script = self
            .descriptor()?
            .explicit_script()
            .map_err(|e| SpillmanError::Descriptor(e.to_string()))?;
        let hash = SighashCache::new(tx)
            .p2wsh_signature_hash(0, &script, self.deposit_value, EcdsaSighashType::All)
            .map_err(|e| SpillmanError::Descriptor(e.to_string()))?;
        Ok(Message::from(hash))
    }

    /// Sign the deposit's input of `tx` with `key` (the cable's or the socket's channel key).
    pub fn sign(
        &self,
        tx: &Transaction,
        key: &SecretKey,
    ) -> Result<ecdsa::Signature, SpillmanError> {
        let message = self.sighash(tx)?;
        Ok(ecdsa::Signature::sighash_all(
            Secp256k1::signing_only().sign_ecdsa(&message, key),
        ))
    }

    /// Verify `signature` by `who` over the deposit's input of `tx` (BIP 143, `SIGHASH_ALL` only).
    pub fn verify(
        &self,
        tx: &Transaction,
        who: Signer,
        signature: &ecdsa::Signature,
    ) -> Result<(), SpillmanError> {
        let key = match who {
            Signer::Cable => &self.cable_key,
            Signer::Socket => &self.socket_key,
        };
        if signature.sighash_type != EcdsaSighashType::All {
            return Err(SpillmanError::Signature(who.name()));
        }
        let message = self.sighash(tx)?;
        Secp256k1::verification_only()
            .verify_ecdsa(&message, &signature.signature, &key.inner)
            .map_err(|_: secp256k1::Error| SpillmanError::Signature(who.name()))
    }

    /// `tx` with the deposit's witness from both signatures (miniscript's satisfier), ready to
    /// broadcast.
    pub fn finalize(
        &self,
        tx: &Transaction,
        cable: ecdsa::Signature,
        socket: ecdsa::Signature,
    ) -> Result<Transaction, SpillmanError> {
        let signatures = HashMap::from([(self.cable_key, cable), (self.socket_key, socket)]);
        let mut signed = tx.clone();
        self.descriptor()?
            .satisfy(&mut signed.input[0], &signatures)
            .map_err(|e| SpillmanError::Descriptor(e.to_string()))?;
        Ok(signed)
    }
}
