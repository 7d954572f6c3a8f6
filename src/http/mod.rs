//! The HTTP edge: one router per resource, one error type, the session and
//! admin extractors, metrics per route, CORS, body limits, the OpenAPI
//! document and the web pages.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;

use crate::config::Config;
use crate::service::catalog::CatalogService;
use crate::service::orders::OrderService;
use crate::service::tokens::TokenService;
use crate::service::users::UserService;
use crate::service::{Ports, ServiceError};

/// An API path: `v1!("/items/{id}")` is `"/api/v1/items/{id}"`. Every
/// route is registered at its full path in one router: nested routers
/// rebuilt each request's URI once per level and cloned a layer more per
/// request.
macro_rules! v1 {
    ($path:literal) => {
        concat!("/api/v1", $path)
    };
}

pub mod admin;
pub mod connection;
pub mod deadline;
pub mod error;
pub mod extract;
pub mod health;
mod inline_wakes;
pub mod int;
pub mod items;
pub mod openapi;
pub mod orders;
pub mod request_metrics;
pub mod users;

/// What every handler gets: one `Arc`, so the clone axum makes for each
/// request is one reference count, not one per service (the clones and
/// drops of the services' counts were ~4 % of an instance's CPU answering
/// sold-out orders).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The configuration, ports and services behind [`AppState`].
pub struct Services {
    pub config: Arc<Config>,
    pub ports: Ports,
    pub users: Arc<UserService>,
    pub catalog: Arc<CatalogService>,
    pub tokens: Arc<TokenService>,
    pub orders: Arc<OrderService>,
    pub monitor: Arc<crate::service::monitor::SaleMonitor>,
    pub metrics: PrometheusHandle,
    /// This instance's places for buying requests in flight
    /// (`order_path_max_in_flight`; none when 0: no shedding).
    pub buying_gate: Option<Arc<tokio::sync::Semaphore>>,
}

/// The whole application: `/api/v1/*`, `/api/openapi.json`, health and
/// metrics, and the web pages as the fallback.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(users::router())
        .merge(items::router())
        .merge(orders::router())
        // The admin API's larger bodies (bulk sign-up): its own limit,
        // inside the one below.
        .merge(admin::router().layer(DefaultBodyLimit::max(state.config.admin_max_body_bytes)))
        .merge(health::api_router())
        .route("/api/openapi.json", get(openapi_json))
        .route("/api", any(api_not_found))
        .route("/api/{*rest}", any(api_not_found))
        // One `layer` call wraps every route once: each `Router::layer` is a
        // boxed service of its own that every request clones and calls
        // through (two allocations and a dynamic call per layer and
        // request), so the stack goes on as one.
        .layer(
            ServiceBuilder::new()
                .layer(SetResponseHeaderLayer::if_not_present(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ))
                .layer(
                    deadline::DeadlineLayer::new(
                        std::time::Duration::from_millis(state.config.request_timeout_ms),
                        state.config.held_order_grace(),
                    )
                    .bulk_limit(std::time::Duration::from_millis(
                        state.config.bulk_users_timeout_ms,
                    )),
                ),
        );
    let web_dir = web_dir(&state.config);
    // Pages and assets are revalidated on every use (Last-Modified /
    // If-Modified-Since, answered 304): a deploy shows at once.
    // No page is shown inside another site's frame (a buy button under a
    // decoy is clicked by a visitor logged in here), nor a file read as
    // another type than it is served as.
    let pages = Router::new()
        .fallback_service(ServeDir::new(web_dir).append_index_html_on_directories(true))
        .layer(
            ServiceBuilder::new()
                .layer(SetResponseHeaderLayer::if_not_present(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-cache"),
                ))
                .layer(SetResponseHeaderLayer::overriding(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("frame-ancestors 'none'"),
                ))
                .layer(SetResponseHeaderLayer::overriding(
                    header::X_FRAME_OPTIONS,
                    HeaderValue::from_static("DENY"),
                ))
                .layer(SetResponseHeaderLayer::overriding(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                )),
        );
    Router::new()
        .merge(api)
        .merge(health::root_router())
        .merge(pages)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost first, as one layer (above).
        .layer(
            ServiceBuilder::new()
                .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
                .layer(cors(&state.config))
                .layer(request_metrics::RequestMetricsLayer),
        )
        .with_state(state)
}

/// The configured web folder, else the pages of the source tree the
/// binary was built from; a warning when the folder was set and is not
/// there, or when there are no pages at all (the API is served either way).
fn web_dir(config: &Config) -> std::path::PathBuf {
    if config.web_dir.is_dir() {
        return config.web_dir.clone();
    }
    let shipped = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/web"));
    if !shipped.is_dir() {
        tracing::warn!(web_dir = %config.web_dir.display(), source_tree = %shipped.display(),
            "no web pages: SECKILL_WEB_DIR is not a folder, nor is the source tree's; pages answer 404");
    } else if config.web_dir != Config::default().web_dir {
        tracing::warn!(web_dir = %config.web_dir.display(), serving = %shipped.display(),
            "SECKILL_WEB_DIR is not a folder; serving the source tree's pages");
    }
    shipped
}

fn cors(config: &Config) -> CorsLayer {
    let origins: Vec<HeaderValue> = config
        .cors_origin_list()
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        // A page's script backs off as a 429 or 503 asks.
        .expose_headers([header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi::ApiDoc::openapi())
}

/// A path that exists, asked with a method it does not take: 405 with the
/// error body (axum adds the `Allow` header).
async fn method_not_allowed() -> error::ApiError {
    error::ApiError::MethodNotAllowed
}

async fn api_not_found() -> error::ApiError {
    ServiceError::NotFound("no such endpoint").into()
}
