//! `GET /health` (JSON) and `GET /metrics` (Prometheus text) over HTTP,
//! on a loopback address by default.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde::Serialize;

use crate::config::Roles;
use crate::node::Shared;

/// What `GET /health` returns. Every count is read from live state.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Health {
    /// `"healthy"` when every configured peer is connected, else `"degraded"`.
    pub status: &'static str,
    /// Configured mesh peers connected now (distinct identities).
    pub peers: usize,
    pub expected_peers: usize,
    /// Other connected peers (agents).
    pub agents: usize,
    pub peer_id: String,
    pub version: &'static str,
    pub uptime_s: u64,
    pub roles: Roles,
    /// Agents in the directory (registered here or anywhere in the mesh).
    pub directory_agents: usize,
    pub listen: Option<SocketAddr>,
}

pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let shutdown = shared.shutdown.clone();
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!("health server failed: {e}");
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> Json<Health> {
    Json(shared.health())
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(shared.live()),
    )
}
