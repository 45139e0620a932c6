//! Transactions of the `spillman` payment channel (seed 003, "Micropayment Channel Protocol"
//! steps 4–17 and "Protocol Peculiarities"; design.md `spillman`), one implementation for both
//! nodes.
//!
//! A [`Channel`] is fixed when it opens: both keys, the deposit outpoint and value, the refund's
//! lock height, the fee every channel transaction pays, and where the cable's and the socket's
//! money goes. From these the refund and every payment are *derived*, never negotiated: each
//! side builds the transaction it expects and compares, so a message can only match or be
//! refused. The deposit output is the P2WSH of the miniscript descriptor
//! `wsh(multi(2,cable,socket))` (BIP 141/143); signatures are ECDSA over the BIP 143 sighash
//! with `SIGHASH_ALL`; witnesses are built by miniscript's satisfier.
//!
//! - The **refund** spends the deposit back to the cable, `nLockTime` = the lock height (BIP 65
//!   semantics of an absolute lock time; the input's sequence enables it). The socket signs it
//!   before it sees the signed deposit (step 7).
//! - A **payment** spends the deposit: `to_socket` to the socket, the rest less the fee back to
//!   the cable (no change output below the dust limit: it goes to the fee). The cable signs each
//!   one a quota higher; the socket keeps the highest and co-signs it to close (step 16).

use std::collections::HashMap;

use bitcoin::secp256k1::{self, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, ecdsa, Amount, OutPoint, PublicKey, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Witness,
};
use miniscript::Descriptor;

/// Why a channel transaction or signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpillmanError {
    /// The refund's lock height is outside what the socket accepts.
    #[error("refund lock height {got} is outside {min}..={max}")]
    LockHeight {
        /// The lock height asked for.
        got: u32,
        /// Earliest accepted.
        min: u32,
        /// Latest accepted.
        max: u32,
    },
    /// The transaction is not the refund the channel's terms give.
    #[error("not the channel's refund: {0}")]
    Refund(String),
    /// The transaction is not the payment of that total the channel's terms give.
    #[error("not the channel's payment of {to_socket} to the socket: {reason}")]
    Payment {
        /// The total the payment should pay the socket.
        to_socket: Amount,
        /// What differs.
        reason: String,
    },
    /// The total is more than the deposit can pay after the fee, or below the dust limit.
    #[error(
        "{to_socket} to the socket is outside what the deposit of {deposit} pays ({min}..={max})"
    )]
    Total {
        /// The total asked for.
        to_socket: Amount,
        /// The deposit's value.
        deposit: Amount,
        /// The smallest payment (the dust limit of the socket's script).
        min: Amount,
        /// The deposit less the fee.
        max: Amount,
    },
    /// A signature that does not verify against the key and the transaction.
    #[error("bad signature by the {0}")]
    Signature(&'static str),
    /// The channel breaks the socket's offered terms (deposit, scripts, fee).
    #[error("{0}")]
    Terms(String),
    /// A key or descriptor miniscript refuses.
    #[error("descriptor: {0}")]
    Descriptor(String),
}

/// The terms of one channel, fixed when it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The cable's channel key (compressed).
    pub cable_key: PublicKey,
    /// The socket's channel key (compressed).
    pub socket_key: PublicKey,
    /// The deposit output.
    pub deposit: OutPoint,
    /// Its value.
    pub deposit_value: Amount,
    /// Block height from which the refund is valid (its `nLockTime`).
    pub refund_lock_height: u32,
    /// The fee of the refund and of every payment.
    pub fee: Amount,
    /// Where the refund and the cable's change go.
    pub cable_script: ScriptBuf,
    /// Where the socket's payments go.
    pub socket_script: ScriptBuf,
}

/// The deposit's descriptor, `wsh(multi(2,cable,socket))`.
pub fn deposit_descriptor(
    cable_key: &PublicKey,
    socket_key: &PublicKey,
) -> Result<Descriptor<PublicKey>, SpillmanError> {
    format!("wsh(multi(2,{cable_key},{socket_key}))")
        .parse()
        .map_err(|e: miniscript::Error| SpillmanError::Descriptor(e.to_string()))
}

impl Channel {
    /// The deposit's descriptor.
    pub fn descriptor(&self) -> Result<Descriptor<PublicKey>, SpillmanError> {
        deposit_descriptor(&self.cable_key, &self.socket_key)
    }

    /// The scriptPubKey the deposit must pay.
    pub fn deposit_script_pubkey(&self) -> Result<ScriptBuf, SpillmanError> {
        Ok(self.descriptor()?.script_pubkey())
    }

    /// Check the refund's lock height against the range the socket accepts.
    pub fn check_lock_height(&self, min: u32, max: u32) -> Result<(), SpillmanError> {
        if !(min..=max).contains(&self.refund_lock_height) {
            return Err(SpillmanError::LockHeight {
                got: self.refund_lock_height,
                min,
                max,
            });
        }
        Ok(())
    }

    /// Check a proposed channel against the socket's offered terms (socket.proto
    /// `SpillmanOfferTerms`, `OpenChannelRequest`): the socket's key is the offer's, the deposit
    /// at least `min_deposit_sat`, the cable's script a segwit output (so that no signed
    /// transaction of the channel can be malleated, seed 003 "Protocol Peculiarities"), the
    /// refund's lock height `tip + min_lock_blocks ..= tip + max_lock_blocks`, and the fee at
    /// least `min_fee_rate_sat_per_vb` × the largest channel transaction's vsize so that the
    /// refund and every payment get relayed. The cable runs it on its own proposal, the socket
    /// on what it receives. Errors: [`SpillmanError::Terms`], [`SpillmanError::LockHeight`].
    pub fn check_terms(
        &self,
        terms: &crate::v1::SpillmanOfferTerms,
        tip: u32,
        min_fee_rate_sat_per_vb: u64,
    ) -> Result<(), SpillmanError> {
        if self.socket_key.to_bytes() != terms.socket_channel_key {
            return Err(SpillmanError::Terms(
                "the socket's channel key is not the offer's".into(),
            ));
        }
        let min_deposit = Amount::from_sat(terms.min_deposit_sat);
        if self.deposit_value < min_deposit {
            return Err(SpillmanError::Terms(format!(
                "deposit {} is below the minimum of {min_deposit}",
                self.deposit_value
            )));
        }
        if !self.cable_script.is_witness_program() {
            return Err(SpillmanError::Terms(
                "the cable's script is not a segwit output".into(),
            ));
        }
        self.check_lock_height(
            tip.saturating_add(terms.min_lock_blocks),
            tip.saturating_add(terms.max_lock_blocks),
        )?;
        let min_fee = self.fee_at(min_fee_rate_sat_per_vb)?;
        if self.fee < min_fee {
            return Err(SpillmanError::Terms(format!(
                "fee {} is below {min_fee_rate_sat_per_vb} sat/vB ({min_fee})",
                self.fee
            )));
        }
        Ok(())
    }

    /// The unsigned refund: the deposit less the fee back to the cable, valid from the lock
    /// height.
    pub fn refund(&self) -> Result<Transaction, SpillmanError> {
        let value = self
            .deposit_value
            .checked_sub(self.fee)
            .filter(|v| *v >= self.cable_script.minimal_non_dust())
            .ok_or_else(|| {
                SpillmanError::Refund(format!(
                    "the deposit {} does not cover the fee {}",
                    self.deposit_value, self.fee
                ))
            })?;
        let lock_time = absolute::LockTime::from_height(self.refund_lock_height)
            .map_err(|e| SpillmanError::Refund(e.to_string()))?;
        Ok(self.spend(
            lock_time,
            Sequence::ENABLE_LOCKTIME_NO_RBF,
            vec![TxOut {
                value,
                script_pubkey: self.cable_script.clone(),
            }],
        ))
    }

    /// The smallest and largest total a payment may pay the socket.
    pub fn total_range(&self) -> (Amount, Amount) {
        (
            self.socket_script.minimal_non_dust(),
            self.deposit_value
                .checked_sub(self.fee)
                .unwrap_or(Amount::ZERO),
        )
    }

    /// The unsigned payment of `to_socket` in total: that to the socket, the rest less the fee
    /// to the cable (no change below the dust limit).
    pub fn payment(&self, to_socket: Amount) -> Result<Transaction, SpillmanError> {
        let (min, max) = self.total_range();
        if to_socket < min || to_socket > max {
            return Err(SpillmanError::Total {
                to_socket,
                deposit: self.deposit_value,
                min,
                max,
            });
        }
        let mut outputs = vec![TxOut {
            value: to_socket,
            script_pubkey: self.socket_script.clone(),
        }];
        let change = max - to_socket;
        if change >= self.cable_script.minimal_non_dust() {
            outputs.push(TxOut {
                value: change,
                script_pubkey: self.cable_script.clone(),
            });
        }
        Ok(self.spend(absolute::LockTime::ZERO, Sequence::MAX, outputs))
    }

    fn spend(
        &self,
        lock_time: absolute::LockTime,
        sequence: Sequence,
        outputs: Vec<TxOut>,
    ) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time,
            input: vec![TxIn {
                previous_output: self.deposit,
                script_sig: ScriptBuf::new(),
                sequence,
                witness: Witness::new(),
            }],
            output: outputs,
        }
    }

    /// The virtual size of `tx` once its deposit input carries the 2-of-2 witness (at its
    /// largest), for fees.
    pub fn signed_vsize(&self, tx: &Transaction) -> Result<u64, SpillmanError> {
        let witness = self
            .descriptor()?
            .max_weight_to_satisfy()
            .map_err(|e| SpillmanError::Descriptor(e.to_string()))?;
        Ok((tx.weight() + witness).to_vbytes_ceil())
    }

    /// The fee the channel's transactions need at `sat_per_vb`: the payment with change, the
    /// largest of them, signed.
    pub fn fee_at(&self, sat_per_vb: u64) -> Result<Amount, SpillmanError> {
        // Sizes do not depend on amounts: probe with a deposit large enough for change.
        let probe = Channel {
            fee: Amount::ZERO,
            deposit_value: Amount::MAX_MONEY,
            ..self.clone()
        };
        let (min, _) = probe.total_range();
        let vsize = self.signed_vsize(&probe.payment(min)?)?;
        Ok(Amount::from_sat(sat_per_vb * vsize))
    }

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

    /// The socket's check of a refund the cable asks it to sign (step 7): exactly this
    /// channel's refund.
    pub fn check_refund(&self, tx: &Transaction) -> Result<(), SpillmanError> {
        let expected = self.refund()?;
        if *tx != expected {
            return Err(SpillmanError::Refund(describe_difference(&expected, tx)));
        }
        Ok(())
    }

    /// The socket's check of a payment (steps 12–13): exactly this channel's payment of
    /// `to_socket`, signed by the cable.
    pub fn check_payment(
        &self,
        tx: &Transaction,
        to_socket: Amount,
        cable_signature: &ecdsa::Signature,
    ) -> Result<(), SpillmanError> {
        let expected = self.payment(to_socket)?;
        if *tx != expected {
            return Err(SpillmanError::Payment {
                to_socket,
                reason: describe_difference(&expected, tx),
            });
        }
        self.verify(tx, Signer::Cable, cable_signature)
    }
}

/// Which side signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The cable (payer).
    Cable,
    /// The socket (payee).
    Socket,
}

impl Signer {
    fn name(self) -> &'static str {
        match self {
            Signer::Cable => "cable",
            Signer::Socket => "socket",
        }
    }
}

/// What differs between the expected transaction and the one received, for the error.
fn describe_difference(expected: &Transaction, got: &Transaction) -> String {
    if got.input.len() != 1 || got.input[0].previous_output != expected.input[0].previous_output {
        return "it does not spend exactly the deposit".into();
    }
    if got.lock_time != expected.lock_time || got.input[0].sequence != expected.input[0].sequence {
        return format!(
            "lock time {} / sequence {} instead of {} / {}",
            got.lock_time, got.input[0].sequence, expected.lock_time, expected.input[0].sequence
        );
    }
    if got.output != expected.output {
        let show = |tx: &Transaction| {
            tx.output
                .iter()
                .map(|o| format!("{} to {}", o.value, o.script_pubkey))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return format!("outputs [{}] instead of [{}]", show(got), show(expected));
    }
    "version or witness differ".into()
}

#[cfg(test)]
mod tests {
    use bitcoin::hashes::Hash;
    use bitcoin::{Txid, WPubkeyHash};

    use super::*;

    fn key(byte: u8) -> (SecretKey, PublicKey) {
        let secret = SecretKey::from_slice(&[byte; 32]).unwrap();
        let public = PublicKey::new(secret.public_key(&Secp256k1::signing_only()));
        (secret, public)
    }

    fn channel() -> (Channel, SecretKey, SecretKey) {
        let (cable_secret, cable_key) = key(1);
        let (socket_secret, socket_key) = key(2);
        let channel = Channel {
            cable_key,
            socket_key,
            deposit: OutPoint::new(Txid::all_zeros(), 0),
            deposit_value: Amount::from_sat(20_000),
            refund_lock_height: 500,
            fee: Amount::from_sat(300),
            cable_script: ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([1; 20])),
            socket_script: ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([2; 20])),
        };
        (channel, cable_secret, socket_secret)
    }

    #[test]
    fn the_fee_covers_a_signed_payment_with_change() {
        let (channel, ..) = channel();
        // One P2WSH 2-of-2 input with its witness, two P2WPKH outputs: about 170 vB.
        let fee = channel.fee_at(2).unwrap();
        assert!((320..=380).contains(&fee.to_sat()), "{fee}");
        let unset = Channel {
            deposit_value: Amount::ZERO,
            ..channel
        };
        assert_eq!(unset.fee_at(2).unwrap(), fee);
    }

    #[test]
    fn the_deposit_is_a_p2wsh_two_of_two() {
        let (channel, ..) = channel();
        let descriptor = channel.descriptor().unwrap();
        assert!(channel.deposit_script_pubkey().unwrap().is_p2wsh());
        assert_eq!(
            descriptor.to_string().split('#').next().unwrap(),
            format!("wsh(multi(2,{},{}))", channel.cable_key, channel.socket_key)
        );
    }

    #[test]
    fn a_payment_pays_the_total_and_returns_the_rest_less_the_fee() {
        let (channel, ..) = channel();
        let tx = channel.payment(Amount::from_sat(5_000)).unwrap();
        assert_eq!(tx.output[0].value, Amount::from_sat(5_000));
        assert_eq!(tx.output[0].script_pubkey, channel.socket_script);
        assert_eq!(tx.output[1].value, Amount::from_sat(14_700));
        assert_eq!(tx.output[1].script_pubkey, channel.cable_script);
        assert_eq!(tx.lock_time, absolute::LockTime::ZERO);
        // Change below the dust limit goes to the fee.
        let all = channel.payment(Amount::from_sat(19_600)).unwrap();
        assert_eq!(all.output.len(), 1);
        assert!(matches!(
            channel.payment(Amount::from_sat(19_701)),
            Err(SpillmanError::Total { .. })
        ));
        assert!(matches!(
            channel.payment(Amount::from_sat(100)),
            Err(SpillmanError::Total { .. })
        ));
    }

    #[test]
    fn the_refund_is_timelocked_and_pays_the_cable() {
        let (channel, ..) = channel();
        let refund = channel.refund().unwrap();
        assert_eq!(
            refund.lock_time,
            absolute::LockTime::from_height(500).unwrap()
        );
        assert!(refund.input[0].sequence.enables_absolute_lock_time());
        assert_eq!(refund.output[0].value, Amount::from_sat(19_700));
        channel.check_refund(&refund).unwrap();
        assert!(channel.check_lock_height(400, 600).is_ok());
        assert!(matches!(
            channel.check_lock_height(501, 600),
            Err(SpillmanError::LockHeight { .. })
        ));
        let mut early = refund.clone();
        early.lock_time = absolute::LockTime::from_height(10).unwrap();
        let error = channel.check_refund(&early).unwrap_err().to_string();
        assert!(error.contains("lock time"), "{error}");
        let mut elsewhere = refund;
        elsewhere.output[0].script_pubkey = channel.socket_script.clone();
        let error = channel.check_refund(&elsewhere).unwrap_err().to_string();
        assert!(error.contains("outputs"), "{error}");
    }

    #[test]
    fn the_socket_takes_only_the_exact_payment_signed_by_the_cable() {
        let (channel, cable_secret, socket_secret) = channel();
        let total = Amount::from_sat(2_000);
        let tx = channel.payment(total).unwrap();
        let signature = channel.sign(&tx, &cable_secret).unwrap();
        channel.check_payment(&tx, total, &signature).unwrap();
        // One quota short, or signed by another key, or for another total.
        assert!(matches!(
            channel.check_payment(&tx, Amount::from_sat(3_000), &signature),
            Err(SpillmanError::Payment { .. })
        ));
        let forged = channel.sign(&tx, &socket_secret).unwrap();
        assert_eq!(
            channel.check_payment(&tx, total, &forged),
            Err(SpillmanError::Signature("cable"))
        );
        let mut less_change = tx.clone();
        less_change.output[1].value -= Amount::from_sat(1);
        let signature_of_that = channel.sign(&less_change, &cable_secret).unwrap();
        assert!(matches!(
            channel.check_payment(&less_change, total, &signature_of_that),
            Err(SpillmanError::Payment { .. })
        ));
    }

    #[test]
    fn both_signatures_make_a_two_of_two_witness() {
        let (channel, cable_secret, socket_secret) = channel();
        let tx = channel.payment(Amount::from_sat(1_000)).unwrap();
        let signed = channel
            .finalize(
                &tx,
                channel.sign(&tx, &cable_secret).unwrap(),
                channel.sign(&tx, &socket_secret).unwrap(),
            )
            .unwrap();
        // Empty item (CHECKMULTISIG's extra pop), two signatures, the witness script.
        let witness: Vec<&[u8]> = signed.input[0].witness.iter().collect();
        assert_eq!(witness.len(), 4);
        assert!(witness[0].is_empty());
        assert_eq!(
            witness[3],
            channel
                .descriptor()
                .unwrap()
                .explicit_script()
                .unwrap()
                .as_bytes()
        );
        channel
            .verify(
                &tx,
                Signer::Socket,
                &channel.sign(&tx, &socket_secret).unwrap(),
            )
            .unwrap();
    }
}

/// `proto/testvectors/spillman_transactions.json` (socket.proto, "The spillman channel's
/// transactions"): the deposit script, the refund and payments byte for byte, rebuilt from the
/// file's fixed channel with this module's functions, for implementers in other languages.
#[cfg(test)]
mod vectors {
    use bitcoin::consensus::encode;
    use bitcoin::hex::{DisplayHex, FromHex};
    use bitcoin::psbt::Psbt;
    use serde_json::{json, Value};

    use super::*;

    fn hex(v: &Value) -> Vec<u8> {
        Vec::<u8>::from_hex(v.as_str().unwrap()).unwrap()
    }

    fn secret(v: &Value) -> SecretKey {
        SecretKey::from_slice(&hex(v)).unwrap()
    }

    /// Everything the file states of `tx`: unsigned and signed by both keys.
    fn transaction(
        channel: &Channel,
        tx: &Transaction,
        cable: &SecretKey,
        socket: &SecretKey,
    ) -> Value {
        let cable_signature = channel.sign(tx, cable).unwrap();
        let socket_signature = channel.sign(tx, socket).unwrap();
        channel.verify(tx, Signer::Cable, &cable_signature).unwrap();
        channel
            .verify(tx, Signer::Socket, &socket_signature)
            .unwrap();
        let signed = channel
            .finalize(tx, cable_signature, socket_signature)
            .unwrap();
        json!({
            "unsigned_tx_hex": encode::serialize_hex(tx),
            "txid": tx.compute_txid().to_string(),
            "sighash_hex": channel.sighash(tx).unwrap().to_string(),
            "cable_signature_hex": cable_signature.to_vec().to_lower_hex_string(),
            "socket_signature_hex": socket_signature.to_vec().to_lower_hex_string(),
            "signed_tx_hex": encode::serialize_hex(&signed),
            "signed_weight_wu": signed.weight().to_wu(),
        })
    }

    /// The vectors the file's `channel` and `payments_to_socket_sat` give.
    fn build(file: &Value) -> Value {
        let inputs = &file["channel"];
        let secp = Secp256k1::signing_only();
        let (cable_secret, socket_secret) = (
            secret(&inputs["cable_secret_key_hex"]),
            secret(&inputs["socket_secret_key_hex"]),
        );
        let mut channel = Channel {
            cable_key: PublicKey::new(cable_secret.public_key(&secp)),
            socket_key: PublicKey::new(socket_secret.public_key(&secp)),
            deposit: OutPoint::new(
                inputs["deposit_txid"].as_str().unwrap().parse().unwrap(),
                inputs["deposit_vout"].as_u64().unwrap() as u32,
            ),
            deposit_value: Amount::from_sat(inputs["deposit_sat"].as_u64().unwrap()),
            refund_lock_height: inputs["refund_lock_height"].as_u64().unwrap() as u32,
            fee: Amount::ZERO,
            cable_script: ScriptBuf::from_bytes(hex(&inputs["cable_script_hex"])),
            socket_script: ScriptBuf::from_bytes(hex(&inputs["socket_script_hex"])),
        };
        let rate = inputs["min_fee_rate_sat_per_vb"].as_u64().unwrap();
        channel.fee = channel.fee_at(rate).unwrap();
        let descriptor = channel.descriptor().unwrap();
        let witness_script = descriptor.explicit_script().unwrap();
        let refund = channel.refund().unwrap();
        channel.check_refund(&refund).unwrap();
        let (min, max) = channel.total_range();
        let payments: Vec<Value> = file["payments_to_socket_sat"]
            .as_array()
            .unwrap()
            .iter()
            .map(|total| {
                let total = Amount::from_sat(total.as_u64().unwrap());
                let tx = channel.payment(total).unwrap();
                let signature = channel.sign(&tx, &cable_secret).unwrap();
                // The PayTransactionRequest.psbt a t2t cable sends (cable-node payer/spillman.rs
                // `sign_payment`), and what the socket reads of it: the unsigned transaction and
                // the cable's partial signature (socket-node seller/spillman.rs `pay`).
                let mut psbt = Psbt::from_unsigned_tx(tx.clone()).unwrap();
                psbt.inputs[0].witness_utxo = Some(TxOut {
                    value: channel.deposit_value,
                    script_pubkey: channel.deposit_script_pubkey().unwrap(),
                });
                psbt.inputs[0].witness_script = Some(witness_script.clone());
                psbt.inputs[0]
                    .partial_sigs
                    .insert(channel.cable_key, signature);
                let read = Psbt::deserialize(&psbt.serialize()).unwrap();
                let sent = read.inputs[0].partial_sigs[&channel.cable_key];
                channel
                    .check_payment(&read.unsigned_tx, total, &sent)
                    .unwrap();
                let mut vector = transaction(&channel, &tx, &cable_secret, &socket_secret);
                vector["to_socket_sat"] = json!(total.to_sat());
                vector["psbt_hex"] = json!(psbt.serialize().to_lower_hex_string());
                vector
            })
            .collect();
        json!({
            "keys": {
                "cable_channel_key_hex": channel.cable_key.to_bytes().to_lower_hex_string(),
                "socket_channel_key_hex": channel.socket_key.to_bytes().to_lower_hex_string(),
            },
            "deposit": {
                "descriptor": descriptor.to_string(),
                "witness_script_hex": witness_script.to_hex_string(),
                "script_pubkey_hex": channel.deposit_script_pubkey().unwrap().to_hex_string(),
                "outpoint_hex": encode::serialize_hex(&channel.deposit),
            },
            "fee": {
                "witness_weight_wu": descriptor.max_weight_to_satisfy().unwrap().to_wu(),
                "signed_vsize": channel.signed_vsize(&channel.payment(min).unwrap()).unwrap(),
                "fee_sat": channel.fee.to_sat(),
            },
            "dust": {
                "min_to_socket_sat": min.to_sat(),
                "max_to_socket_sat": max.to_sat(),
                "min_change_sat": channel.cable_script.minimal_non_dust().to_sat(),
            },
            "refund": transaction(&channel, &refund, &cable_secret, &socket_secret),
            "payments": payments,
        })
    }

    #[test]
    fn the_spillman_transaction_test_vectors_hold() {
        let file: Value =
            serde_json::from_str(include_str!("../testvectors/spillman_transactions.json"))
                .unwrap();
        let built = build(&file);
        for (field, value) in built.as_object().unwrap() {
            assert_eq!(&file[field], value, "{field}");
        }
        // The keys stand in the script as they come (cable, socket), not sorted: the cable's
        // key sorts after the socket's here, so a sorted script would differ.
        assert!(
            file["keys"]["cable_channel_key_hex"].as_str()
                > file["keys"]["socket_channel_key_hex"].as_str()
        );
    }
}
