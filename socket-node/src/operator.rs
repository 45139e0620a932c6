//! The gRPC service `t2t.v1.Operator`: what only the socket's owner may do (list and close the
//! Lightning channels, list and revoke devices), on a loopback address of its own (`operator_listen`), never on the
//! power-line link the cables reach. Every call carries a bearer token ([`crate::tokens`],
//! checked by the server's interceptor); closing channels and revoking devices need the admin
//! one.

use std::sync::Arc;

use ln::ldk_node::{ChannelDetails, Node};
use proto::v1::operator_server::Operator;
use proto::v1::{self};
use tonic::{Request, Response, Status};

use crate::error::SocketError;
use crate::station::Station;
use crate::store::{DevicePage, DeviceRow, DeviceStatus};

/// The tonic service over a running [`Station`].
pub struct OperatorService(pub Arc<Station>);

impl OperatorService {
    fn ln(&self) -> Result<Arc<Node>, Status> {
        self.0
            .shared
            .ln
            .clone()
            .ok_or_else(|| Status::failed_precondition("this socket has no Lightning node"))
    }
}

/// A channel as the operator sees it.
fn channel_of(c: &ChannelDetails) -> v1::Channel {
    v1::Channel {
        channel_id: c.channel_id.to_string(),
        counterparty_node_id: c.counterparty_node_id.to_string(),
        capacity_sat: c.channel_value_sats,
        outbound_msat: c.outbound_capacity_msat,
        inbound_msat: c.inbound_capacity_msat,
        state: if c.is_usable {
            "usable"
        } else if c.is_channel_ready {
            "ready, peer offline"
        } else {
            "pending"
        }
        .into(),
        funding_txid: c
            .funding_txo
            .map(|o| o.txid.to_string())
            .unwrap_or_default(),
    }
}

/// A device as the operator API sends it.
fn device_of(d: &DeviceRow) -> Result<v1::Device, Status> {
    let key: bitcoin::secp256k1::PublicKey = d
        .key_hex
        .parse()
        .map_err(|e| Status::internal(format!("stored cable key {}: {e}", d.key_hex)))?;
    Ok(v1::Device {
        identity_key: key.serialize().to_vec(),
        role: d.role.to_owned(),
        status: match d.status {
            DeviceStatus::Allowed => "allowed",
            DeviceStatus::Flagged => "flagged",
            DeviceStatus::Banned => "banned",
            DeviceStatus::Revoked => "revoked",
        }
        .to_owned(),
        reason: d.reason.clone().unwrap_or_default(),
        first_seen_unix_ms: d.first_seen_unix_ms,
        sessions: d.sessions,
        energy_used_mwh: d.energy_used_mwh,
        revenue_msat: d.revenue_msat,
        refusals: d.refusals,
        lost_sat: d.lost_sat,
        anomalies: d.anomalies,
        banned_until_unix_ms: d.until_unix_ms.unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn list_devices(
        &self,
        request: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 100,
            n => n.min(1_000),
        };
        let after = if request.after_identity_key.is_empty() {
            None
        } else {
            let key = bitcoin::secp256k1::PublicKey::from_slice(&request.after_identity_key)
                .map_err(|e| Status::invalid_argument(format!("after_identity_key: {e}")))?;
            Some(key.to_string())
        };
        let station = Arc::clone(&self.0);
        let devices = tokio::task::spawn_blocking(move || {
            station.shared.store().devices(DevicePage::ByKey {
                after_key_hex: after.as_deref(),
                limit,
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        let devices: Vec<v1::Device> = devices.iter().map(device_of).collect::<Result<_, _>>()?;
        let next_after_identity_key = match devices.last() {
            Some(last) if devices.len() == limit as usize => last.identity_key.clone(),
            _ => Vec::new(),
        };
        Ok(Response::new(v1::ListDevicesResponse {
            devices,
            next_after_identity_key,
        }))
    }

    async fn revoke_device(
        &self,
        request: Request<v1::RevokeDeviceRequest>,
    ) -> Result<Response<v1::RevokeDeviceResponse>, Status> {
        crate::tokens::require_admin(&request)?;
        let request = request.into_inner();
        let key = bitcoin::secp256k1::PublicKey::from_slice(&request.identity_key)
            .map_err(|e| Status::invalid_argument(format!("identity_key: {e}")))?;
        // Mapped here, not through `From<SocketError>`: no cable was refused.
        let sessions_halted =
            self.0
                .revoke_cable(&key, &request.reason)
                .await
                .map_err(|e| match e {
                    SocketError::Invalid(m) => Status::invalid_argument(m),
                    e => Status::internal(e.to_string()),
                })?;
        Ok(Response::new(v1::RevokeDeviceResponse { sessions_halted }))
    }

    async fn list_channels(
        &self,
        _: Request<v1::ListChannelsRequest>,
    ) -> Result<Response<v1::ListChannelsResponse>, Status> {
        let ln = self.ln()?;
        Ok(Response::new(v1::ListChannelsResponse {
            channels: ln.list_channels().iter().map(channel_of).collect(),
            onchain_spendable_sat: ln.list_balances().spendable_onchain_balance_sats,
        }))
    }

    async fn close_channel(
        &self,
        request: Request<v1::CloseChannelRequest>,
    ) -> Result<Response<v1::CloseChannelResponse>, Status> {
        crate::tokens::require_admin(&request)?;
        let request = request.into_inner();
        let ln = self.ln()?;
        let channels: Vec<ChannelDetails> = ln
            .list_channels()
            .into_iter()
            .filter(|c| {
                request.channel_id.is_empty() || c.channel_id.to_string() == request.channel_id
            })
            .collect();
        if channels.is_empty() {
            return Err(Status::not_found(if request.channel_id.is_empty() {
                "no channels".to_owned()
            } else {
                format!("no channel {}", request.channel_id)
            }));
        }
        // ldk-node's calls block; keep them off the async workers.
        let closing = tokio::task::spawn_blocking(move || {
            channels
                .iter()
                .map(|c| {
                    let closed = if request.force {
                        ln.force_close_channel(
                            &c.user_channel_id,
                            c.counterparty_node_id,
                            Some("closed by the socket's operator".into()),
                        )
                    } else {
                        ln.close_channel(&c.user_channel_id, c.counterparty_node_id)
                    };
                    closed
                        .map(|()| c.channel_id.to_string())
                        .map_err(|e| Status::failed_precondition(format!("{}: {e}", c.channel_id)))
                })
                .collect::<Result<Vec<_>, Status>>()
        })
        .await
        .map_err(SocketError::internal)??;
        for id in &closing {
            tracing::info!(channel = %id, force = request.force, "Lightning channel closing");
        }
        Ok(Response::new(v1::CloseChannelResponse { closing }))
    }
}
