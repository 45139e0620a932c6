//! The channel's transactions, derived from its terms: the deposit's descriptor, the refund,
//! each payment, and the fee they need.

use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Amount, PublicKey, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use miniscript::Descriptor;

use super::{deposit_descriptor, Channel, SpillmanError};

impl Channel {
    /// The deposit's descriptor.
    pub fn descriptor(&self) -> Result<Descriptor<PublicKey>, SpillmanError> {
        deposit_descriptor(&self.cable_key, &self.socket_key)
    }

    /// The scriptPubKey the deposit must pay.
    pub fn deposit_script_pubkey(&self) -> Result<ScriptBuf, SpillmanError> {
        Ok(self.descriptor()?.script_pubkey())
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
}
