//! The order path over HTTP: captcha, seckill tokens, orders, payment.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath, CurrentUser};
use super::items::list_page;
use super::AppState;
use crate::domain::{ItemId, Order, OrderStatus, PromoId};
use crate::service::deadline_hold::DeadlineHold;
use crate::service::orders::PlaceOrder;
use crate::service::ServiceError;

/// Where orders are placed (`POST`) and listed; a placement carries a
/// [`DeadlineHold`] (`http::deadline`).
pub const ORDERS_PATH: &str = v1!("/orders");

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v1!("/promos/{id}/captcha"), get(captcha))
        .route(v1!("/promos/{id}/tokens"), post(issue_token))
        .route(ORDERS_PATH, post(place).get(list))
        .route(v1!("/orders/{order_no}"), get(detail))
        .route(v1!("/orders/{order_no}/pay"), post(pay))
        .route(v1!("/orders/{order_no}/cancel"), post(cancel))
}

/// Load shedding in front of the buying requests (token and order): past
/// `order_path_max_in_flight` on this instance, 429 with `Retry-After` at
/// once. The buying handlers' first extractor, so before the session, the
/// body or any round trip: what a crowd can pile onto one instance is
/// bounded. The place is held until the answer.
pub struct Admitted {
    _place: Option<OwnedSemaphorePermit>,
}

impl FromRequestParts<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(gate) = &state.buying_gate else {
            return Ok(Admitted { _place: None });
        };
        match gate.clone().try_acquire_owned() {
            Ok(place) => Ok(Admitted {
                _place: Some(place),
            }),
            Err(_) => {
                metrics::counter!("seckill_requests_shed_total").increment(1);
                Err(ServiceError::RateLimited(
                    "this instance is busy with other buyers; retry shortly",
                )
                .into())
            }
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    #[serde(deserialize_with = "super::int::i64")]
    pub item_id: i64,
    /// The captcha's characters; required unless captcha is off.
    #[schema(max_length = 16)]
    pub captcha: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct OrderRequest {
    #[serde(deserialize_with = "super::int::i64")]
    pub promo_id: i64,
    #[serde(deserialize_with = "super::int::i64")]
    pub item_id: i64,
    /// Units, 1 up to the per-user limit.
    #[serde(deserialize_with = "super::int::i64")]
    pub amount: i64,
    /// The seckill token (single use). Missing or null: 403 `INVALID_TOKEN`,
    /// as a wrong one.
    #[schema(max_length = 128)]
    #[serde(default, deserialize_with = "token_or_empty")]
    pub token: String,
}

/// A token that is null reads as none (refused as a wrong one would be).
fn token_or_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatusDto {
    PendingPayment,
    Paid,
    Cancelled,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderDto {
    pub order_no: String,
    pub user_id: i64,
    pub item_id: i64,
    pub promo_id: i64,
    pub amount: i64,
    pub unit_price_cents: i64,
    pub total_cents: i64,
    pub status: OrderStatusDto,
    pub created_at: DateTime<Utc>,
}

impl From<&Order> for OrderDto {
    fn from(o: &Order) -> Self {
        OrderDto {
            order_no: o.order_no.0.clone(),
            user_id: o.user_id.0,
            item_id: o.item_id.0,
            promo_id: o.promo_id.0,
            amount: o.amount,
            unit_price_cents: o.unit_price_cents,
            total_cents: o.total_cents,
            status: match o.status {
                OrderStatus::PendingPayment => OrderStatusDto::PendingPayment,
                OrderStatus::Paid => OrderStatusDto::Paid,
                OrderStatus::Cancelled => OrderStatusDto::Cancelled,
            },
            created_at: o.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    pub orders: Vec<OrderDto>,
    /// The `offset` of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u32>,
}

/// Which page of your orders.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderPage {
    /// Orders to skip (newest first); 0 by default.
    #[serde(default)]
    #[param(minimum = 0)]
    pub offset: i32,
    /// Orders on the page, at least 1; at most `SECKILL_ITEM_LIST_PAGE_MAX`
    /// (500 by default), which is also the default: a larger limit is
    /// taken as that.
    #[param(minimum = 1)]
    pub limit: Option<i32>,
}

/// A PNG image, as the OpenAPI document describes it (a `Vec<u8>` would be
/// a list of numbers there).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // a schema only
pub struct Png(Vec<u8>);

/// A captcha image for (you, this promo); single use, short-lived. Drawing
/// one replaces the pending one: another site's page cannot (403 for a
/// cookie sent with a request the browser marks cross-site).
#[utoipa::path(get, path = "/api/v1/promos/{id}/captcha", tag = "orders", security(("session" = [])),
    params(("id" = i64, Path, description = "promo id")),
    responses((status = 200, content_type = "image/png", body = Png), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn captcha(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<impl IntoResponse> {
    let png = state.tokens.captcha(user.id, PromoId(id)).await?;
    Ok((
        [(CONTENT_TYPE, "image/png"), (CACHE_CONTROL, "no-store")],
        png,
    ))
}

/// A seckill token for this promo and item.
#[utoipa::path(post, path = "/api/v1/promos/{id}/tokens", tag = "orders", security(("session" = [])),
    params(("id" = i64, Path, description = "promo id")), request_body = TokenRequest,
    responses((status = 201, body = TokenView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn issue_token(
    State(state): State<AppState>,
    _: Admitted,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> ApiResult<(StatusCode, ApiJson<TokenView>)> {
    let t = state
        .tokens
        .issue(
            user.id,
            PromoId(id),
            ItemId(req.item_id),
            req.captcha.as_deref(),
        )
        .await
        .inspect_err(|e| count_refusal(&state, PromoId(id), e))?;
    Ok((
        StatusCode::CREATED,
        ApiJson(TokenView {
            token: t.token,
            expires_at: t.expires_at,
        }),
    ))
}

/// Counts a refused token or order request for the dashboard. Every
/// refusal but "unavailable" comes after the promo's lookup (an unknown
/// promo and bad input are not counted); "unavailable" may come before it
/// (shutdown, a DB outage), so it is counted only for a promo this instance
/// has loaded: counters for any id a caller sends would be made otherwise.
fn count_refusal(state: &AppState, promo: PromoId, e: &ServiceError) {
    if !matches!(e, ServiceError::Unavailable { .. }) || state.catalog.knows_promo(promo) {
        state.monitor.refused(promo, e.reason());
    }
}

/// Places an order; answers only after the order is committed. One order
/// per buyer per promo, of at most `SECKILL_PER_USER_LIMIT` units (1 by
/// default): a second order is 409 `ALREADY_BOUGHT`, also after the first
/// was cancelled (its units go back on sale for the others).
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", security(("session" = [])), request_body = OrderRequest,
    responses((status = 201, body = OrderDto), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn place(
    State(state): State<AppState>,
    _: Admitted,
    user: CurrentUser,
    hold: Option<Extension<DeadlineHold>>,
    ApiJson(r): ApiJson<OrderRequest>,
) -> ApiResult<(StatusCode, ApiJson<OrderDto>)> {
    debug_assert!(
        hold.is_some(),
        "the deadline layer gives every placement a hold"
    );
    let hold = hold.map(|Extension(h)| h).unwrap_or_default();
    let order = state
        .orders
        .place_held(
            user.id,
            PlaceOrder {
                promo_id: PromoId(r.promo_id),
                item_id: ItemId(r.item_id),
                amount: r.amount,
                token: r.token,
            },
            &hold,
        )
        .await
        .inspect_err(|e| count_refusal(&state, PromoId(r.promo_id), e))?;
    Ok((StatusCode::CREATED, ApiJson(OrderDto::from(&order))))
}

/// Your orders, newest first, a page at a time (`next_offset` names the
/// next page while there is one).
#[utoipa::path(get, path = "/api/v1/orders", operation_id = "list_orders", tag = "orders", security(("session" = [])), params(OrderPage),
    responses((status = 200, body = OrderList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    page: Result<Query<OrderPage>, QueryRejection>,
) -> ApiResult<ApiJson<OrderList>> {
    let Query(page) = page?;
    let (offset, limit) = list_page(page.offset, page.limit, state.config.item_list_page_max)?;
    let (orders, more) = state.orders.list(user.id, offset, limit).await?;
    Ok(ApiJson(OrderList {
        orders: orders.iter().map(OrderDto::from).collect(),
        next_offset: more.then(|| offset.saturating_add(limit)),
    }))
}

/// One of your orders (another user's is not found).
#[utoipa::path(get, path = "/api/v1/orders/{order_no}", operation_id = "order_detail", tag = "orders", security(("session" = [])),
    params(("order_no" = String, Path, description = "order number")),
    responses((status = 200, body = OrderDto), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn detail(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(no): ApiPath<String>,
) -> ApiResult<ApiJson<OrderDto>> {
    Ok(ApiJson(OrderDto::from(
        &state.orders.get(user.id, &no).await?,
    )))
}

/// Pays an order (mock payment); idempotent.
#[utoipa::path(post, path = "/api/v1/orders/{order_no}/pay", tag = "orders", security(("session" = [])),
    params(("order_no" = String, Path, description = "order number")),
    responses((status = 200, body = OrderDto), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn pay(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(no): ApiPath<String>,
) -> ApiResult<ApiJson<OrderDto>> {
    Ok(ApiJson(OrderDto::from(
        &state.orders.pay(user.id, &no).await?,
    )))
}

/// Cancels an unpaid order; its stock goes back on sale.
#[utoipa::path(post, path = "/api/v1/orders/{order_no}/cancel", tag = "orders", security(("session" = [])),
    params(("order_no" = String, Path, description = "order number")),
    responses((status = 200, body = OrderDto), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(no): ApiPath<String>,
) -> ApiResult<ApiJson<OrderDto>> {
    Ok(ApiJson(OrderDto::from(
        &state.orders.cancel(user.id, &no).await?,
    )))
}
