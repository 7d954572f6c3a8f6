//! Liveness, readiness, metrics, and the small facts pages need (server
//! time, client settings).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ApiJson;
use super::AppState;

/// Routes outside `/api/v1`.
pub fn root_router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The health module's routes under `/api/v1` (server time, client settings).
pub fn api_router() -> Router<AppState> {
    Router::new()
        .route(v1!("/time"), get(time))
        .route(v1!("/config"), get(client_config))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable`.
    pub status: String,
    /// Each dependency: `ok` or why not.
    #[schema(value_type = Object)]
    pub checks: serde_json::Map<String, serde_json::Value>,
}

/// 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> ApiJson<Health> {
    ApiJson(Health {
        status: "ok".into(),
        checks: serde_json::Map::new(),
    })
}

/// 200 when every dependency answers and the instance takes orders, else
/// 503 naming what is not ready (a dependency down, shutting down, its node
/// id not owned). The dependencies' verdicts are at most one heartbeat
/// interval (and one second) old: one check serves every request meanwhile.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    // A heartbeat interval old at most, and never more than a second: a
    // balancer hears of a dependency down within about that.
    let max_age = std::time::Duration::from_millis(state.config.heartbeat_interval_ms.min(1_000));
    let mut checks: serde_json::Map<String, serde_json::Value> = state
        .monitor
        .dependency_checks(max_age)
        .await
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    if state.orders.draining() {
        // Shutting down: balancers take this instance out first.
        checks.insert("instance".into(), "shutting down".into());
    }
    if !state.orders.owns_node_id() {
        // Its orders are refused (503) until it does: balancers send the
        // crowd elsewhere.
        checks.insert(
            "node_id".into(),
            "not owned: another process holds it, or its lease is not confirmed".into(),
        );
    }
    let ready = checks.values().all(|v| v == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        ApiJson(Health {
            status: if ready { "ok" } else { "unavailable" }.into(),
            checks,
        }),
    )
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    metrics::gauge!("seckill_order_queue_depth").set(state.orders.queued() as f64);
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerTime {
    pub now: DateTime<Utc>,
}

/// The server's clock, for countdowns.
#[utoipa::path(get, path = "/api/v1/time", tag = "ops", responses((status = 200, body = ServerTime)))]
pub async fn time() -> ApiJson<ServerTime> {
    ApiJson(ServerTime { now: Utc::now() })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientConfig {
    pub captcha_enabled: bool,
    pub per_user_limit: i64,
    pub order_strategy: String,
    /// The item cache's stated staleness bound: after an item or promo
    /// write returns, no instance serves the old detail later than this.
    pub item_staleness_bound_ms: u64,
}

/// Settings a front end needs.
#[utoipa::path(get, path = "/api/v1/config", tag = "ops", responses((status = 200, body = ClientConfig)))]
pub async fn client_config(State(state): State<AppState>) -> ApiJson<ClientConfig> {
    let c = &state.config;
    ApiJson(ClientConfig {
        captcha_enabled: c.captcha_enabled,
        per_user_limit: c.per_user_limit,
        order_strategy: c.order_strategy.as_str().into(),
        item_staleness_bound_ms: c.item_staleness_bound_ms(),
    })
}
