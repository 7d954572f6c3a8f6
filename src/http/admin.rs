//! The admin API (bearer = `SECKILL_ADMIN_TOKEN`): bulk accounts, items,
//! promos, publishing and a promo's live stats.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::Router;
use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiResult, ErrorBody};
use super::extract::{Admin, ApiJson, ApiPath};
use super::items::{page_size, ItemDto, PromoDto};
use super::AppState;
use crate::domain::{ItemId, ItemPatch, NewItem, NewPromo, PromoId};
use crate::service::users::BulkUser;
use crate::service::ServiceError;

/// The bulk sign-up: a deadline of its own (`http::deadline`).
pub const BULK_USERS_PATH: &str = v1!("/admin/users");

pub fn router() -> Router<AppState> {
    Router::new()
        .route(BULK_USERS_PATH, post(create_users))
        .route(v1!("/admin/items"), post(create_item))
        .route(v1!("/admin/items/{id}"), patch(update_item))
        .route(v1!("/admin/promos"), post(create_promo).get(list_promos))
        .route(v1!("/admin/promos/{id}/publish"), post(publish))
        .route(v1!("/admin/promos/{id}/end"), post(end_promo))
        .route(v1!("/admin/promos/{id}/stats"), get(stats))
        .route(v1!("/admin/instances"), get(instances))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BulkUserDto {
    #[schema(max_length = 16, pattern = r"^\+?[0-9]{6,15}$")]
    pub phone: String,
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub name: String,
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BulkUsersRequest {
    pub users: Vec<BulkUserDto>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    /// Accounts created (phones already registered are skipped).
    pub created: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItemRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub title: String,
    #[schema(minimum = 1, maximum = 1000000000)]
    #[serde(deserialize_with = "super::int::i64")]
    pub price_cents: i64,
    #[schema(minimum = 0, maximum = 100000000)]
    #[serde(deserialize_with = "super::int::i64")]
    pub stock: i64,
    #[serde(default)]
    #[schema(max_length = 4000)]
    pub description: String,
    /// Empty, an http(s) URL with a host (`http://` or `https://`, lower
    /// case), or a path of this site starting with one `/`; no spaces.
    #[serde(default)]
    #[schema(max_length = 1024, pattern = "^(https?://|/|$)")]
    pub image_url: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemPatchRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub title: Option<String>,
    #[schema(minimum = 1, maximum = 1000000000)]
    #[serde(default, deserialize_with = "super::int::opt_i64")]
    pub price_cents: Option<i64>,
    #[schema(max_length = 4000)]
    pub description: Option<String>,
    #[schema(max_length = 1024, pattern = "^(https?://|/|$)")]
    pub image_url: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPromoRequest {
    #[serde(deserialize_with = "super::int::i64")]
    pub item_id: i64,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "super::int::i64")]
    pub price_cents: i64,
    /// RFC 3339 with offset.
    pub start_at: DateTime<FixedOffset>,
    pub end_at: DateTime<FixedOffset>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromoList {
    pub promos: Vec<PromoDto>,
    /// The `before` of the next page (older promos); absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

/// Which page of the promo list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PromoPage {
    /// Only promos with a smaller id (older); none: from the newest.
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// Promos on the page, at least 1; at most `SECKILL_ITEM_LIST_PAGE_MAX`
    /// (500 by default), which is also the default: a larger limit is
    /// taken as that.
    #[param(minimum = 1)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StockLogCounts {
    pub init: i64,
    pub committed: i64,
    pub rolled_back: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromoStatsDto {
    pub promo_id: i64,
    pub item_id: i64,
    /// The order strategy the promo was published under (`write-behind`,
    /// `db-lock`, `db-optimistic`): only instances whose strategy keeps the
    /// stock in the same place sell it (409 `CONFLICT` elsewhere). Null
    /// before it is published, or for a promo published before promos
    /// recorded it.
    pub strategy: Option<String>,
    /// `item_stock.stock` in the database.
    pub stock_db: i64,
    /// The item's sales in the database (`item_stock.sales`: every sale of
    /// the item, orders not cancelled).
    pub sales_db: i64,
    /// The ledger's stock (Redis); null when not warmed, or when the
    /// promo's strategy keeps no ledger (db-lock, db-optimistic).
    pub stock_cache: Option<i64>,
    /// Units in orders not cancelled.
    pub sold: i64,
    /// Orders not cancelled.
    pub orders: i64,
    /// The most units one buyer holds in orders not cancelled (0 without
    /// orders): never above the per-user limit.
    pub max_units_per_buyer: i64,
    pub stock_log: StockLogCounts,
    /// Token and order requests refused, by reason (`sold_out`,
    /// `rate_limited`, …), the whole cluster's, as of each instance's last
    /// heartbeat (`SECKILL_HEARTBEAT_INTERVAL_MS`).
    #[schema(value_type = Object)]
    pub refused: std::collections::BTreeMap<String, i64>,
}

/// One instance of the deployment, from its heartbeat.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceDto {
    pub node_id: u16,
    /// The address it listens on, as bound (a host name resolved); an
    /// unspecified IP (`0.0.0.0:8080`) with the machine's name (`web-3:8080`).
    pub http_addr: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    /// No heartbeat for more than three intervals.
    pub stale: bool,
    /// Each dependency as that instance sees it: `ok` or why not.
    #[schema(value_type = Object)]
    pub checks: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub instances: Vec<InstanceDto>,
}

/// Creates many accounts at once (support, drills).
#[utoipa::path(post, path = "/api/v1/admin/users", tag = "admin", security(("admin" = [])), request_body = BulkUsersRequest,
    responses((status = 201, body = Created), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_users(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(r): ApiJson<BulkUsersRequest>,
) -> ApiResult<(StatusCode, ApiJson<Created>)> {
    let users = r
        .users
        .into_iter()
        .map(|u| BulkUser {
            phone: u.phone,
            name: u.name,
            password: u.password,
        })
        .collect();
    let created = state.users.create_many(users).await?;
    Ok((StatusCode::CREATED, ApiJson(Created { created })))
}

/// Creates an item with its stock.
#[utoipa::path(post, path = "/api/v1/admin/items", tag = "admin", security(("admin" = [])), request_body = NewItemRequest,
    responses((status = 201, body = ItemDto), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_item(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(r): ApiJson<NewItemRequest>,
) -> ApiResult<(StatusCode, ApiJson<ItemDto>)> {
    let v = state
        .catalog
        .create_item(NewItem {
            title: r.title,
            price_cents: r.price_cents,
            stock: r.stock,
            description: r.description,
            image_url: r.image_url,
        })
        .await?;
    Ok((StatusCode::CREATED, ApiJson(ItemDto::from(&v))))
}

/// Changes an item's descriptive fields (stock moves only through orders).
#[utoipa::path(patch, path = "/api/v1/admin/items/{id}", tag = "admin", security(("admin" = [])),
    params(("id" = i64, Path, description = "item id")), request_body = ItemPatchRequest,
    responses((status = 200, body = ItemDto), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn update_item(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<i64>,
    ApiJson(r): ApiJson<ItemPatchRequest>,
) -> ApiResult<ApiJson<ItemDto>> {
    let patch = ItemPatch {
        title: r.title,
        price_cents: r.price_cents,
        description: r.description,
        image_url: r.image_url,
    };
    let v = state.catalog.update_item(ItemId(id), patch).await?;
    Ok(ApiJson(ItemDto::from(&v)))
}

/// Creates a promo (not published yet: orders are refused until then).
#[utoipa::path(post, path = "/api/v1/admin/promos", tag = "admin", security(("admin" = [])), request_body = NewPromoRequest,
    responses((status = 201, body = PromoDto), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_promo(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(r): ApiJson<NewPromoRequest>,
) -> ApiResult<(StatusCode, ApiJson<PromoDto>)> {
    let p = state
        .catalog
        .create_promo(NewPromo {
            item_id: ItemId(r.item_id),
            name: r.name,
            price_cents: r.price_cents,
            start_at: r.start_at.with_timezone(&Utc),
            end_at: r.end_at.with_timezone(&Utc),
        })
        .await?;
    Ok((StatusCode::CREATED, ApiJson(PromoDto::from(&p))))
}

/// The promos, newest first, a page at a time (`next_before` names the
/// next page while there is one).
#[utoipa::path(get, path = "/api/v1/admin/promos", tag = "admin", security(("admin" = [])), params(PromoPage),
    responses((status = 200, body = PromoList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_promos(
    State(state): State<AppState>,
    _: Admin,
    page: Result<Query<PromoPage>, QueryRejection>,
) -> ApiResult<ApiJson<PromoList>> {
    let Query(page) = page?;
    let (Some(limit), true) = (
        page_size(page.limit, state.config.item_list_page_max),
        page.before.is_none_or(|b| b >= 1),
    ) else {
        return Err(ServiceError::Invalid("before and limit must be at least 1".into()).into());
    };
    let (promos, more) = state
        .catalog
        .promos(page.before.map(PromoId), limit)
        .await?;
    let next_before = more.then(|| promos.last().map(|p| p.id.0)).flatten();
    Ok(ApiJson(PromoList {
        promos: promos.iter().map(PromoDto::from).collect(),
        next_before,
    }))
}

/// Ends a promo now: its tokens and orders are refused `PROMO_ENDED` from
/// here on (a not-started one never starts); one ended already is answered
/// as it is.
#[utoipa::path(post, path = "/api/v1/admin/promos/{id}/end", tag = "admin", security(("admin" = [])),
    params(("id" = i64, Path, description = "promo id")),
    responses((status = 200, body = PromoDto), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn end_promo(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<ApiJson<PromoDto>> {
    let p = state.catalog.end_promo(PromoId(id)).await?;
    Ok(ApiJson(PromoDto::from(&p)))
}

/// Publishes a promo: warms its stock up; orders are refused before.
#[utoipa::path(post, path = "/api/v1/admin/promos/{id}/publish", tag = "admin", security(("admin" = [])),
    params(("id" = i64, Path, description = "promo id")),
    responses((status = 200, body = PromoDto), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<ApiJson<PromoDto>> {
    let p = state.catalog.publish(PromoId(id)).await?;
    Ok(ApiJson(PromoDto::from(&p)))
}

/// A promo's live figures: DB vs ledger stock, sold, orders, journal states.
#[utoipa::path(get, path = "/api/v1/admin/promos/{id}/stats", tag = "admin", security(("admin" = [])),
    params(("id" = i64, Path, description = "promo id")),
    responses((status = 200, body = PromoStatsDto), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<ApiJson<PromoStatsDto>> {
    let s = state.catalog.stats(PromoId(id)).await?;
    let refused = state.monitor.refusals(PromoId(id)).await?;
    Ok(ApiJson(PromoStatsDto {
        refused: refused.into_iter().collect(),
        promo_id: s.promo.id.0,
        item_id: s.promo.item_id.0,
        strategy: s.promo.published_under().map(|x| x.as_str().to_owned()),
        stock_db: s.stock_db,
        sales_db: s.sales_db,
        stock_cache: s.stock_cache,
        sold: s.totals.sold,
        orders: s.totals.orders,
        max_units_per_buyer: s.totals.max_units_per_buyer,
        stock_log: StockLogCounts {
            init: s.totals.stock_log_init,
            committed: s.totals.stock_log_committed,
            rolled_back: s.totals.stock_log_rolled_back,
        },
    }))
}

/// The instances of the deployment and their health, from their heartbeats.
#[utoipa::path(get, path = "/api/v1/admin/instances", tag = "admin", security(("admin" = [])),
    responses((status = 200, body = InstanceList), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn instances(
    State(state): State<AppState>,
    _: Admin,
) -> ApiResult<ApiJson<InstanceList>> {
    let stale_after =
        std::time::Duration::from_millis(state.config.heartbeat_interval_ms.max(100) * 3);
    let list = state.monitor.instances(stale_after).await?;
    Ok(ApiJson(InstanceList {
        instances: list
            .into_iter()
            .map(|i| InstanceDto {
                node_id: i.beat.node_id,
                http_addr: i.beat.http_addr,
                version: i.beat.version,
                started_at: i.beat.started_at,
                seen_at: i.beat.seen_at,
                stale: i.stale,
                checks: i.beat.checks,
            })
            .collect(),
    }))
}
