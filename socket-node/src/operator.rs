//! The gRPC service `t2t.v1.Operator`: what only the socket's owner may do (list and close the
//! Lightning channels), on a loopback address of its own (`operator_listen`), never on the
//! power-line link the cables reach. Every call carries a bearer token ([`crate::tokens`],
//! checked by the server's interceptor); closing channels needs the admin one.

use std::sync::Arc;

use ln::ldk_node::{ChannelDetails, Node};
use proto::v1::operator_server::Operator;
use proto::v1::{self};
use tonic::{Request, Response, Status};

use crate::error::SocketError;
use crate::station::Station;

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

#[tonic::async_trait]
impl Operator for OperatorService {
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
