//! The checks of a channel and of what the other side sends: the offered terms, the refund's
//! lock height, the refund and each payment against the ones the terms derive.

use bitcoin::{ecdsa, Amount, Transaction};

use super::{Channel, Signer, SpillmanError};

impl Channel {
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
