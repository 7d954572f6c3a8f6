//! Extractors: JSON bodies and path parameters whose rejections are
//! `ApiError`s (400 with the JSON body), the session user, and the admin.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::domain::UserId;
use crate::service::ServiceError;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "seckill_session";

/// A JSON body; malformed JSON, a missing or wrongly typed field → 400.
///
/// Parsed with `serde_json` alone; only a body that fails is parsed again
/// through `axum::Json`, whose path-tracking deserializer words the error
/// (it names the field) and cost ~5 % of the sold-out answer's instructions
/// when every body went through it (docs/bench-notes.md). Same answers
/// either way: a content type other than plain `application/json` (`+json`
/// suffixes, odd spellings) is left to `axum::Json` whole.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !plain_json(req.headers()) {
            let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
            return Ok(ApiJson(v));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(JsonRejection::from)?;
        match serde_json::from_slice(&body) {
            Ok(v) => Ok(ApiJson(v)),
            Err(_) => {
                let axum::Json(v) = axum::Json::<T>::from_bytes(&body)?;
                Ok(ApiJson(v))
            }
        }
    }
}

/// `Content-Type: application/json`, bare or with `charset=utf-8` (what
/// clients send); any other spelling goes through axum's own check.
fn plain_json(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let v = v.as_bytes();
    v.eq_ignore_ascii_case(b"application/json")
        || v.eq_ignore_ascii_case(b"application/json; charset=utf-8")
        || v.eq_ignore_ascii_case(b"application/json;charset=utf-8")
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A path parameter; one that does not parse → 400.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The bearer token of the `Authorization` header, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The `seckill_session` cookie's value, if any.
pub fn session_cookie(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

/// The client's address, for per-address limits: the configured header's
/// value when `client_ip_header` is set (a trusted proxy overwrites it), else
/// the peer address; empty when neither is known (in-process tests).
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(name) = state.config.client_ip_header.as_deref() {
            if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
                // A list (`X-Forwarded-For`): the last is the one our proxy
                // added; the ones before it are the client's to write.
                let last = v.rsplit(',').next().unwrap_or("").trim();
                if let Ok(ip) = last.parse::<std::net::IpAddr>() {
                    return Ok(ClientIp(ip.to_string()));
                }
            }
        }
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        Ok(ClientIp(peer))
    }
}

/// The logged-in user; 401 without a valid session.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub id: UserId,
    pub token: String,
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Either one authenticates: the bearer header first, then the
        // cookie (a browser may send a stale bearer beside a live cookie).
        let given = bearer(parts);
        let cookie = session_cookie(parts).filter(|c| Some(*c) != given);
        if given.is_none() && cookie.is_none() {
            return Err(ServiceError::Unauthenticated("log in first").into());
        }
        for (token, by_cookie) in given
            .map(|t| (t, false))
            .into_iter()
            .chain(cookie.map(|c| (c, true)))
        {
            if let Some(id) = state.users.session_user(token).await? {
                if by_cookie && !same_site_or_allowed(parts, state) {
                    return Err(ServiceError::Forbidden(
                        "a request from another site's page may not use the session cookie; \
                         its origin is not in SECKILL_CORS_ORIGINS",
                    )
                    .into());
                }
                return Ok(CurrentUser {
                    id,
                    token: token.to_owned(),
                });
            }
        }
        Err(ServiceError::Unauthenticated("session unknown or expired; log in again").into())
    }
}

/// A browser attaches the session cookie to any request to this site, one
/// another site's page makes (a form, a `no-cors` fetch) included; with
/// `SECKILL_COOKIE_SECURE` (`SameSite=None`) nothing else stops it. So a
/// cookie-authenticated request that changes something (any method but
/// GET, HEAD, OPTIONS) whose browser names its `Origin` is taken only from
/// this site's host or an origin of `SECKILL_CORS_ORIGINS`. A client that
/// sends no `Origin` is no browser page: taken. Hosts are compared without
/// ports (nginx passes `$host`; same-site ignores ports too).
///
/// One GET changes something too: drawing a captcha replaces the buyer's
/// pending one (and spends their drawing budget). Another site's page can
/// ask for it as an image, which names no `Origin`; a browser marks such a
/// request `Sec-Fetch-Site: cross-site`, and that is refused.
fn same_site_or_allowed(parts: &Parts, state: &AppState) -> bool {
    use axum::http::Method;
    let draws_captcha = parts.method == Method::GET
        && parts.uri.path().starts_with("/api/v1/promos/")
        && parts.uri.path().ends_with("/captcha");
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) && !draws_captcha {
        return true;
    }
    let Some(origin) = parts.headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        let cross_site = parts
            .headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        return !cross_site;
    };
    // The host of an authority (`user@host:port`, `[v6]:port`).
    fn host_of(authority: &str) -> &str {
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        }
    }
    // This site's own pages, the common case, first; then the list.
    let same_host = origin.split_once("://").is_some_and(|(_, authority)| {
        parts
            .headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|host| {
                !host.is_empty() && host_of(host).eq_ignore_ascii_case(host_of(authority))
            })
    });
    // ("null" — a sandboxed or file page — or garbage has no "://".)
    same_host || state.config.cors_origin_list().iter().any(|o| o == origin)
}

/// The admin: the bearer token equals `SECKILL_ADMIN_TOKEN`. Without one
/// configured every admin call is 403; without a bearer, 401 — 403 when a
/// user's session cookie came instead; with another bearer (a user
/// session, a wrong token), 403.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = state.config.admin_token.as_ref() else {
            return Err(ServiceError::Forbidden(
                "the admin API is closed (SECKILL_ADMIN_TOKEN is not set)",
            )
            .into());
        };
        let Some(given) = bearer(parts) else {
            if let Some(cookie) = session_cookie(parts) {
                if state.users.session_user(cookie).await?.is_some() {
                    return Err(ServiceError::Forbidden(
                        "a user session is not an admin: admin endpoints need Authorization: Bearer <admin token>",
                    )
                    .into());
                }
            }
            return Err(ServiceError::Unauthenticated(
                "admin endpoints need Authorization: Bearer <admin token>",
            )
            .into());
        };
        if same(given.as_bytes(), expected.0.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ServiceError::Forbidden("not an admin").into())
        }
    }
}
