//! The cable's spillman channels (seed 003): proposed, their refund signed, their status,
//! and the ones whose refund it holds.

use bitcoin::Amount;
use rusqlite::params;

use super::persist;
use super::{CableStore, Result};

/// A spillman channel as the cable stored it.
#[derive(Debug, Clone)]
pub struct CableChannel {
    /// The session the socket opened for it, once it did.
    pub session_id: Option<String>,
    /// The cable's channel key.
    pub secret: bitcoin::secp256k1::SecretKey,
    /// The terms.
    pub channel: proto::spillman::Channel,
    /// The signed deposit.
    pub deposit: bitcoin::Transaction,
    /// The fully signed refund, once the socket signed it.
    pub refund: Option<bitcoin::Transaction>,
    /// See the table.
    pub status: String,
}

impl CableStore {
    /// Record a channel the cable proposes, before its key leaves (seed 003 step 6).
    pub fn propose_channel(
        &self,
        secret: &bitcoin::secp256k1::SecretKey,
        channel: &proto::spillman::Channel,
        deposit: &bitcoin::Transaction,
    ) -> Result<()> {
        persist("cable-propose-channel", || {
            use bitcoin::hex::DisplayHex;
            self.db.execute(
                "INSERT INTO spillman_channels (deposit_txid, secret_hex, socket_key_hex, deposit_vout,
                     deposit_sat, refund_lock_height, fee_sat, cable_script_hex, socket_script_hex,
                     deposit_tx_hex, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'proposed')",
                params![
                    channel.deposit.txid.to_string(),
                    secret.secret_bytes().to_lower_hex_string(),
                    channel.socket_key.to_string(),
                    channel.deposit.vout,
                    channel.deposit_value.to_sat() as i64,
                    channel.refund_lock_height,
                    channel.fee.to_sat() as i64,
                    channel.cable_script.to_hex_string(),
                    channel.socket_script.to_hex_string(),
                    bitcoin::consensus::encode::serialize_hex(deposit),
                ],
            )?;
            Ok(())
        })
    }

    /// Record the fully signed refund and the session, before the deposit is handed over
    /// (step 9).
    pub fn refund_signed(
        &self,
        deposit_txid: &str,
        session_id: &str,
        refund: &bitcoin::Transaction,
    ) -> Result<()> {
        persist("cable-refund-signed", || {
            self.db.execute(
                "UPDATE spillman_channels SET session_id = ?2, refund_tx_hex = ?3,
                     status = 'refund-signed'
                 WHERE deposit_txid = ?1",
                params![
                    deposit_txid,
                    session_id,
                    bitcoin::consensus::encode::serialize_hex(refund)
                ],
            )?;
            Ok(())
        })
    }

    /// Set a channel's status.
    pub fn set_channel_status(&self, deposit_txid: &str, status: &str) -> Result<()> {
        persist("cable-set-channel-status", || {
            self.db.execute(
                "UPDATE spillman_channels SET status = ?2 WHERE deposit_txid = ?1",
                params![deposit_txid, status],
            )?;
            Ok(())
        })
    }

    /// The channel of a session, if any.
    pub fn channel_of_session(&self, session_id: &str) -> Result<Option<CableChannel>> {
        Ok(self
            .channels("WHERE session_id = ?1", params![session_id])?
            .pop())
    }

    /// Channels whose refund is held and not used: the deposit may be out.
    pub fn refundable_channels(&self) -> Result<Vec<CableChannel>> {
        self.channels("WHERE status IN ('refund-signed', 'funded')", params![])
    }

    fn channels(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<CableChannel>> {
        use bitcoin::consensus::encode::deserialize_hex;
        let mut statement = self.db.prepare(&format!(
            "SELECT deposit_txid, session_id, secret_hex, socket_key_hex, deposit_vout,
                    deposit_sat, refund_lock_height, fee_sat, cable_script_hex,
                    socket_script_hex, deposit_tx_hex, refund_tx_hex, status
             FROM spillman_channels {filter}"
        ))?;
        let rows = statement.query_map(args, |r| {
            let bad = |i: usize, e: String| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            };
            let text = |i: usize| r.get::<_, String>(i);
            let secret: [u8; 32] = bitcoin::hex::FromHex::from_hex(&text(2)?)
                .map_err(|e: bitcoin::hex::HexToArrayError| bad(2, e.to_string()))?;
            let refund: Option<String> = r.get(11)?;
            let cable_secret = bitcoin::secp256k1::SecretKey::from_slice(&secret)
                .map_err(|e| bad(2, e.to_string()))?;
            Ok(CableChannel {
                session_id: r.get(1)?,
                secret: cable_secret,
                channel: proto::spillman::Channel {
                    cable_key: bitcoin::PublicKey::new(
                        cable_secret.public_key(&bitcoin::secp256k1::Secp256k1::signing_only()),
                    ),
                    socket_key: text(3)?
                        .parse()
                        .map_err(|e: bitcoin::key::ParsePublicKeyError| bad(3, e.to_string()))?,
                    deposit: bitcoin::OutPoint::new(
                        text(0)?
                            .parse()
                            .map_err(|e: bitcoin::hex::HexToArrayError| bad(0, e.to_string()))?,
                        r.get(4)?,
                    ),
                    deposit_value: Amount::from_sat(r.get::<_, i64>(5)? as u64),
                    refund_lock_height: r.get(6)?,
                    fee: Amount::from_sat(r.get::<_, i64>(7)? as u64),
                    cable_script: bitcoin::ScriptBuf::from_hex(&text(8)?)
                        .map_err(|e| bad(8, e.to_string()))?,
                    socket_script: bitcoin::ScriptBuf::from_hex(&text(9)?)
                        .map_err(|e| bad(9, e.to_string()))?,
                },
                deposit: deserialize_hex(&text(10)?).map_err(|e| bad(10, e.to_string()))?,
                refund: refund
                    .map(|hex| deserialize_hex(&hex))
                    .transpose()
                    .map_err(|e| bad(11, e.to_string()))?,
                status: r.get(12)?,
            })
        })?;
        rows.collect()
    }
}
