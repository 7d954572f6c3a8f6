//! Accounts and sessions: `/otp`, `/users`, `/sessions`, `/me`.

use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiJson, ClientIp, CurrentUser, SESSION_COOKIE};
use super::AppState;
use crate::domain::User;
use crate::service::users::Registration;
use crate::service::ServiceError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v1!("/otp"), post(send_otp))
        .route(v1!("/users"), post(register))
        .route(v1!("/sessions"), post(login))
        .route(v1!("/sessions/current"), delete(logout))
        .route(v1!("/me"), get(me))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct OtpRequest {
    /// 6 to 15 digits, optionally starting with `+`.
    #[schema(max_length = 16, pattern = r"^\+?[0-9]{6,15}$")]
    pub phone: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Empty {}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[schema(max_length = 16, pattern = r"^\+?[0-9]{6,15}$")]
    pub phone: String,
    /// The one-time code sent to the phone.
    #[schema(max_length = 16)]
    pub otp: String,
    /// Not blank.
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub name: String,
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// `male`, `female` or `other`.
    #[schema(pattern = "^(male|female|other)$")]
    pub gender: Option<String>,
    #[schema(minimum = 1, maximum = 150)]
    #[serde(default, deserialize_with = "super::int::opt_i64")]
    pub age: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub phone: String,
    pub name: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id.0,
            phone: u.phone.clone(),
            name: u.name.clone(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(max_length = 16)]
    pub phone: String,
    #[schema(max_length = 128)]
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub token: String,
    pub user: UserView,
}

/// Sends a one-time code to a phone (the `dev` sender logs it).
#[utoipa::path(post, path = "/api/v1/otp", tag = "users", request_body = OtpRequest,
    responses((status = 202, body = Empty), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn send_otp(
    state: axum::extract::State<AppState>,
    client: ClientIp,
    ApiJson(req): ApiJson<OtpRequest>,
) -> ApiResult<(StatusCode, ApiJson<Empty>)> {
    state.users.send_otp(&req.phone, &client.0).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(Empty {})))
}

/// Registers a user with the one-time code.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = RegisterRequest,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn register(
    state: axum::extract::State<AppState>,
    ApiJson(r): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, ApiJson<UserView>)> {
    let user = state
        .users
        .register(Registration {
            phone: r.phone,
            otp: r.otp,
            name: r.name,
            password: r.password,
            gender: r.gender,
            // Out of i32 is out of 1..=150 too: the profile check refuses it.
            age: r.age.map(|a| i32::try_from(a).unwrap_or(i32::MAX)),
        })
        .await?;
    Ok((StatusCode::CREATED, ApiJson(UserView::from(&user))))
}

/// Logs in: answers the session token and sets it as an `HttpOnly` cookie.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "users", request_body = LoginRequest,
    responses((status = 201, body = SessionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn login(
    state: axum::extract::State<AppState>,
    client: ClientIp,
    request: HeaderMap,
    ApiJson(r): ApiJson<LoginRequest>,
) -> ApiResult<impl IntoResponse> {
    let (token, user) = state.users.login(&r.phone, &r.password, &client.0).await?;
    let cookie = session_cookie(&state, &request, &token, state.config.session_ttl_secs);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.insert(SET_COOKIE, v);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        ApiJson(SessionView {
            token,
            user: UserView::from(&user),
        }),
    ))
}

/// The session cookie: `SameSite=None; Secure` with `cookie_secure` (front
/// ends on other sites), else `SameSite=Lax` — `Secure` too when the
/// request came over HTTPS to the proxy (`X-Forwarded-Proto: https`), so a
/// browser never sends it over plain HTTP. Trusting that header costs
/// nothing: a client who fakes it only gets a cookie its browser keeps off
/// plain HTTP.
fn session_cookie(state: &AppState, request: &HeaderMap, token: &str, max_age: u64) -> String {
    let https = request
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let site = match (state.config.cookie_secure, https) {
        (true, _) => "SameSite=None; Secure",
        (false, true) => "SameSite=Lax; Secure",
        (false, false) => "SameSite=Lax",
    };
    format!("{SESSION_COOKIE}={token}; HttpOnly; Path=/; Max-Age={max_age}; {site}")
}

/// Logs out: the session ends on every instance. Idempotent: a session
/// already ended, expired or unknown (the embedded default's sessions end
/// with its process) is answered 204 too, with the cookie cleared, so a
/// browser can always drop its `HttpOnly` cookie.
#[utoipa::path(delete, path = "/api/v1/sessions/current", tag = "users", security((), ("session" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn logout(
    state: axum::extract::State<AppState>,
    request: HeaderMap,
    user: Result<CurrentUser, ApiError>,
) -> ApiResult<impl IntoResponse> {
    match user {
        Ok(user) => state.users.logout(&user.token).await?,
        Err(ApiError::Service(ServiceError::Unauthenticated(_))) => {}
        // Another site's page using the cookie, or the sessions' store down.
        Err(e) => return Err(e),
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&state, &request, "", 0)) {
        headers.insert(SET_COOKIE, v);
    }
    Ok((StatusCode::NO_CONTENT, headers))
}

/// The logged-in user.
#[utoipa::path(get, path = "/api/v1/me", tag = "users", security(("session" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn me(
    state: axum::extract::State<AppState>,
    user: CurrentUser,
) -> ApiResult<ApiJson<UserView>> {
    let u = state.users.user(user.id).await?;
    Ok(ApiJson(UserView::from(&u)))
}
