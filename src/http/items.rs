//! Items and promos as buyers see them: `/items`, `/promos/{id}`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::domain::{ItemId, Promo, PromoId, PromoState};
use crate::service::catalog::ItemView;
use crate::service::ServiceError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v1!("/items"), get(list))
        .route(v1!("/items/{id}"), get(detail))
        .route(v1!("/promos/{id}"), get(promo))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromoStatus {
    NotStarted,
    Ongoing,
    Ended,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromoDto {
    pub id: i64,
    pub item_id: i64,
    pub name: String,
    pub price_cents: i64,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub status: PromoStatus,
    pub published: bool,
}

impl From<&Promo> for PromoDto {
    fn from(p: &Promo) -> Self {
        let status = match p.state_at(Utc::now()) {
            PromoState::NotStarted => PromoStatus::NotStarted,
            PromoState::Ongoing => PromoStatus::Ongoing,
            PromoState::Ended => PromoStatus::Ended,
        };
        PromoDto {
            id: p.id.0,
            item_id: p.item_id.0,
            name: p.name.clone(),
            price_cents: p.price_cents,
            start_at: p.start_at,
            end_at: p.end_at,
            status,
            published: p.published,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemDto {
    pub id: i64,
    pub title: String,
    pub price_cents: i64,
    /// Live stock: the ledger's while a published promo runs.
    pub stock: i64,
    pub sales: i64,
    pub description: String,
    pub image_url: String,
    pub promo: Option<PromoDto>,
}

impl From<&ItemView> for ItemDto {
    fn from(v: &ItemView) -> Self {
        let i = &v.item;
        ItemDto {
            id: i.id.0,
            title: i.title.clone(),
            price_cents: i.price_cents,
            stock: i.stock,
            sales: i.sales,
            description: i.description.clone(),
            image_url: i.image_url.clone(),
            promo: v.promo.as_ref().map(PromoDto::from),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemList {
    pub items: Vec<ItemDto>,
    /// The `offset` of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u32>,
}

/// Which page of the item list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemPage {
    /// Items to skip (most sales first); 0 by default.
    #[serde(default)]
    #[param(minimum = 0)]
    pub offset: i32,
    /// Items on the page, at least 1; at most `SECKILL_ITEM_LIST_PAGE_MAX`
    /// (500 by default), which is also the default: a larger limit is
    /// taken as that.
    #[param(minimum = 1)]
    pub limit: Option<i32>,
}

/// A page's size from its `limit`: the largest page (`max`) without one, a
/// larger one taken as `max`; `None` below 1.
pub(super) fn page_size(limit: Option<i64>, max: u32) -> Option<u32> {
    limit
        .map_or(Some(max), |l| u32::try_from(l).ok())
        .filter(|l| *l >= 1)
        .map(|l| l.min(max))
}

/// A list page's `(offset, limit)` from its query: `offset` at least 0,
/// the limit as [`page_size`] takes it; 422 otherwise.
pub(super) fn list_page(
    offset: i32,
    limit: Option<i32>,
    max: u32,
) -> Result<(u32, u32), ServiceError> {
    match (u32::try_from(offset), page_size(limit.map(i64::from), max)) {
        (Ok(offset), Some(limit)) => Ok((offset, limit)),
        _ => Err(ServiceError::Invalid(
            "offset must be at least 0 and limit at least 1".into(),
        )),
    }
}

/// The items, most sales first, a page at a time (`next_offset` names the
/// next page while there is one).
#[utoipa::path(get, path = "/api/v1/items", operation_id = "list_items", tag = "items", params(ItemPage),
    responses((status = 200, body = ItemList), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    page: Result<Query<ItemPage>, QueryRejection>,
) -> ApiResult<ApiJson<ItemList>> {
    let Query(page) = page?;
    let (offset, limit) = list_page(page.offset, page.limit, state.config.item_list_page_max)?;
    let (items, more) = state.catalog.items(offset, limit).await?;
    let next_offset = more.then(|| offset.saturating_add(limit));
    Ok(ApiJson(ItemList {
        items: items.iter().map(ItemDto::from).collect(),
        next_offset,
    }))
}

/// One item with its promo.
#[utoipa::path(get, path = "/api/v1/items/{id}", operation_id = "item_detail", tag = "items", params(("id" = i64, Path, description = "item id")),
    responses((status = 200, body = ItemDto), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn detail(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<ApiJson<ItemDto>> {
    let v = state.catalog.item(ItemId(id)).await?;
    Ok(ApiJson(ItemDto::from(&v)))
}

/// One promo.
#[utoipa::path(get, path = "/api/v1/promos/{id}", tag = "items", params(("id" = i64, Path, description = "promo id")),
    responses((status = 200, body = PromoDto), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn promo(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<ApiJson<PromoDto>> {
    let p = state.catalog.promo(PromoId(id)).await?;
    Ok(ApiJson(PromoDto::from(p.as_ref())))
}
