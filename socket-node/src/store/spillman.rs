//! spillman channels (seed 003): proposed, funded, the highest payment held, closed.

use bitcoin::consensus::encode;
use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction};
use proto::spillman::Channel;
use rusqlite::{params, OptionalExtension};

use super::payments::insert_payment;
use super::persist;
use super::{ChannelStatus, PaymentStatus, Result, Store, StoredTerms};

/// A spillman channel as the socket stored it.
#[derive(Debug, Clone)]
pub struct StoredChannel {
    /// The session it pays for.
    pub session_id: String,
    /// Its terms.
    pub channel: Channel,
    /// Its status.
    pub status: ChannelStatus,
    /// What the highest payment pays the socket.
    pub highest_total: Amount,
    /// The highest payment and the cable's signature of it, if any.
    pub highest: Option<(Transaction, bitcoin::ecdsa::Signature)>,
    /// The deposit, once handed over.
    pub deposit: Option<Transaction>,
    /// The close (the highest payment, fully signed), once broadcast.
    pub close: Option<Transaction>,
}

impl Store {
    /// Record a spillman channel whose refund the socket signs (seed 003 step 7).
    pub fn propose_channel(&self, session_id: &str, channel: &Channel) -> Result<()> {
        persist("socket-propose-channel", || {
            self.db.execute(
                "INSERT INTO spillman_channels (session_id, cable_key_hex, socket_key_hex,
                     deposit_txid, deposit_vout, deposit_sat, refund_lock_height, fee_sat,
                     cable_script_hex, socket_script_hex, status)
                 VALUES (?1, ?2, ?10, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'refund-signed')",
                params![
                    session_id,
                    channel.cable_key.to_string(),
                    channel.deposit.txid.to_string(),
                    channel.deposit.vout,
                    channel.deposit_value.to_sat() as i64,
                    channel.refund_lock_height,
                    channel.fee.to_sat() as i64,
                    channel.cable_script.to_hex_string(),
                    channel.socket_script.to_hex_string(),
                    channel.socket_key.to_string(),
                ],
            )?;
            Ok(())
        })
    }

    /// Record the deposit of a channel with its unconfirmed `parents`, in one SQLite
    /// transaction, before it is broadcast (step 10).
    pub fn fund_channel(
        &self,
        session_id: &str,
        deposit: &Transaction,
        parents: &[Transaction],
    ) -> Result<()> {
        persist("socket-fund-channel", || {
            let db = self.db.unchecked_transaction()?;
            db.execute(
                "UPDATE spillman_channels SET deposit_tx_hex = ?2, status = 'funded'
                 WHERE session_id = ?1 AND status = 'refund-signed'",
                params![session_id, encode::serialize_hex(deposit)],
            )?;
            super::payments::insert_parents(&db, &deposit.compute_txid(), parents)?;
            db.commit()
        })
    }

    /// Hold a spillman payment as the channel's highest, with its payment row, in one SQLite
    /// transaction (steps 13–14): what is credited is what a close can broadcast.
    /// `deposit_confirmed`: the deposit was seen confirmed for this payment (from then on the
    /// channel no longer counts in [`Store::unconfirmed_of_cable`]).
    #[allow(clippy::too_many_arguments)]
    pub fn hold_channel_payment(
        &mut self,
        session_id: &str,
        payment_id: u64,
        tx: &Transaction,
        cable_signature: &bitcoin::ecdsa::Signature,
        total: Amount,
        deposit_confirmed: bool,
        terms: StoredTerms,
        fee: Amount,
    ) -> Result<()> {
        persist("socket-hold-channel-payment", || {
            let db = self.db.transaction()?;
            insert_payment(
                &db,
                PaymentStatus::Held,
                session_id,
                payment_id,
                tx,
                terms,
                fee,
                tx.vsize() as u64,
            )?;
            db.execute(
                "UPDATE spillman_channels SET highest_total_sat = ?2, highest_tx_hex = ?3,
                     highest_cable_signature_hex = ?4,
                     deposit_confirmed = MAX(deposit_confirmed, ?5)
                 WHERE session_id = ?1 AND status = 'funded'",
                params![
                    session_id,
                    total.to_sat() as i64,
                    encode::serialize_hex(tx),
                    cable_signature.to_string(),
                    deposit_confirmed
                ],
            )?;
            db.commit()
        })
    }

    /// Mark a channel closed (its highest payment, fully signed, broadcast as `close`), unpaid
    /// or lost.
    pub fn close_channel(
        &self,
        session_id: &str,
        status: ChannelStatus,
        close: Option<&Transaction>,
    ) -> Result<()> {
        persist("socket-close-channel", || {
            self.db.execute(
                "UPDATE spillman_channels SET status = ?2, close_txid = ?3, close_tx_hex = ?4
                 WHERE session_id = ?1",
                params![
                    session_id,
                    status,
                    close.map(|tx| tx.compute_txid().to_string()),
                    close.map(encode::serialize_hex)
                ],
            )?;
            Ok(())
        })
    }

    /// Channels whose deposit or close is not yet known confirmed: the funded ones, and the
    /// closed ones whose close has not confirmed (the chain watch sends them again while they
    /// are not in the mempool).
    pub fn unsettled_channels(&self) -> Result<Vec<StoredChannel>> {
        self.channels(
            "WHERE status = 'funded'
                OR (status = 'closed' AND close_tx_hex IS NOT NULL
                    AND close_confirmed_height IS NULL)",
            params![],
        )
    }

    /// The close of `session_id`'s channel confirmed at `height`: no longer watched.
    pub fn close_confirmed(&self, session_id: &str, height: u32) -> Result<()> {
        persist("socket-close-confirmed", || {
            self.db.execute(
                "UPDATE spillman_channels SET close_confirmed_height = ?2 WHERE session_id = ?1",
                params![session_id, height],
            )?;
            Ok(())
        })
    }

    /// The session of a channel already proposed on deposit `outpoint`, if any: a deposit
    /// outpoint backs one channel, ever.
    pub fn deposit_used(&self, outpoint: &OutPoint) -> Result<Option<String>> {
        self.db
            .query_row(
                "SELECT session_id FROM spillman_channels
                 WHERE deposit_txid = ?1 AND deposit_vout = ?2",
                params![outpoint.txid.to_string(), outpoint.vout],
                |r| r.get(0),
            )
            .optional()
    }

    /// The spillman channel of a session, if any.
    pub fn channel_of(&self, session_id: &str) -> Result<Option<StoredChannel>> {
        self.channels("WHERE session_id = ?1", params![session_id])
            .map(|mut all| all.pop())
    }

    /// The channels still open (funded and not closed, or with a signed refund and never
    /// funded: a session its cable lost and opened again), with whether their session ended.
    pub fn open_channels(&self) -> Result<Vec<(StoredChannel, bool)>> {
        let channels = self.channels("WHERE status IN ('funded', 'refund-signed')", params![])?;
        channels
            .into_iter()
            .map(|c| {
                let ended: bool = self.db.query_row(
                    "SELECT ended_at_unix_ms IS NOT NULL FROM sessions WHERE id = ?1",
                    params![c.session_id],
                    |r| r.get(0),
                )?;
                Ok((c, ended))
            })
            .collect()
    }

    fn channels(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<StoredChannel>> {
        let mut statement = self.db.prepare(&format!(
            "SELECT session_id, cable_key_hex, deposit_txid, deposit_vout, deposit_sat,
                    refund_lock_height, fee_sat, cable_script_hex, socket_script_hex, status,
                    highest_total_sat, highest_tx_hex, highest_cable_signature_hex, socket_key_hex,
                    deposit_tx_hex, close_tx_hex
             FROM spillman_channels {filter}"
        ))?;
        let rows = statement.query_map(args, |r| {
            let bad = |i: usize, e: String| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            };
            let cable_key: String = r.get(1)?;
            let txid: String = r.get(2)?;
            let cable_script: String = r.get(7)?;
            let socket_script: String = r.get(8)?;
            let highest_tx: Option<String> = r.get(11)?;
            let highest_sig: Option<String> = r.get(12)?;
            let highest = match (highest_tx, highest_sig) {
                (Some(tx), Some(sig)) => Some((
                    encode::deserialize_hex(&tx).map_err(|e| bad(11, e.to_string()))?,
                    sig.parse()
                        .map_err(|e: bitcoin::ecdsa::Error| bad(12, e.to_string()))?,
                )),
                _ => None,
            };
            Ok(StoredChannel {
                session_id: r.get(0)?,
                channel: Channel {
                    cable_key: cable_key
                        .parse()
                        .map_err(|e: bitcoin::key::ParsePublicKeyError| bad(1, e.to_string()))?,
                    socket_key: r
                        .get::<_, String>(13)?
                        .parse()
                        .map_err(|e: bitcoin::key::ParsePublicKeyError| bad(13, e.to_string()))?,
                    deposit: bitcoin::OutPoint::new(
                        txid.parse()
                            .map_err(|e: bitcoin::hex::HexToArrayError| bad(2, e.to_string()))?,
                        r.get(3)?,
                    ),
                    deposit_value: Amount::from_sat(r.get::<_, i64>(4)? as u64),
                    refund_lock_height: r.get(5)?,
                    fee: Amount::from_sat(r.get::<_, i64>(6)? as u64),
                    cable_script: ScriptBuf::from_hex(&cable_script)
                        .map_err(|e| bad(7, e.to_string()))?,
                    socket_script: ScriptBuf::from_hex(&socket_script)
                        .map_err(|e| bad(8, e.to_string()))?,
                },
                status: r.get(9)?,
                highest_total: Amount::from_sat(r.get::<_, i64>(10)? as u64),
                highest,
                deposit: r
                    .get::<_, Option<String>>(14)?
                    .map(|hex| encode::deserialize_hex(&hex))
                    .transpose()
                    .map_err(|e| bad(14, e.to_string()))?,
                close: r
                    .get::<_, Option<String>>(15)?
                    .map(|hex| encode::deserialize_hex(&hex))
                    .transpose()
                    .map_err(|e| bad(15, e.to_string()))?,
            })
        })?;
        rows.collect()
    }
}
