//! `ApiError`, the only error that becomes an HTTP response: a status and a
//! stable JSON body `{"code", "message"}`. 5xx bodies stay generic; their
//! whole cause chain is logged once, here.

use std::fmt::Display;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

use crate::service::ServiceError;

/// The body of every error answer.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code, e.g. `SOLD_OUT`.
    pub code: String,
    /// A human sentence; may change between versions.
    pub message: String,
}

/// `ErrorBody` as it is written: the message straight from the error's
/// `Display` into the JSON (serde's `collect_str`), with no `String` built
/// for it or the code on the way (the sold-out answer is an error answer,
/// and the hottest one).
#[derive(Serialize)]
struct ErrorOut<'a> {
    code: &'static str,
    #[serde(serialize_with = "display")]
    message: &'a dyn Display,
}

fn display<S: Serializer>(text: &&dyn Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(text)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("this endpoint does not take that method (see the Allow header)")]
    MethodNotAllowed,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl ApiError {
    pub fn parts(&self) -> (StatusCode, &'static str) {
        use ServiceError as S;
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            ApiError::Service(e) => match e {
                S::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_ARGUMENT"),
                S::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
                S::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
                S::InvalidToken => (StatusCode::FORBIDDEN, "INVALID_TOKEN"),
                S::WrongCaptcha => (StatusCode::BAD_REQUEST, "WRONG_CAPTCHA"),
                S::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
                S::PromoNotStarted => (StatusCode::CONFLICT, "PROMO_NOT_STARTED"),
                S::PromoEnded => (StatusCode::CONFLICT, "PROMO_ENDED"),
                S::PromoNotPublished => (StatusCode::CONFLICT, "PROMO_NOT_PUBLISHED"),
                S::SoldOut => (StatusCode::CONFLICT, "SOLD_OUT"),
                S::AlreadyBought => (StatusCode::CONFLICT, "ALREADY_BOUGHT"),
                S::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
                S::RateLimited(_) | S::LimitReached { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
                }
                S::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
                S::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
            },
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message: &dyn Display = match &self {
            ApiError::Service(ServiceError::Internal(_)) => &"internal error",
            other => other,
        };
        if status.is_server_error() {
            tracing::error!(code, error = %chain(&self), "request failed");
        }
        let mut resp = (status, Json(ErrorOut { code, message })).into_response();
        let retry_after = match &self {
            ApiError::Service(ServiceError::LimitReached { retry_after, .. }) => {
                // Whole seconds, rounded up: never before the limit allows.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(axum::http::HeaderValue::from(secs.max(1)))
            }
            _ if status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                Some(axum::http::HeaderValue::from_static("1"))
            }
            _ => None,
        };
        if let Some(value) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge;
        }
        ApiError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, ErrorBody) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_body_is_the_code_and_the_errors_own_words_escaped() {
        let (status, b) = body(ServiceError::SoldOut.into()).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(b.code, "SOLD_OUT");
        assert_eq!(b.message, ServiceError::SoldOut.to_string());
        let tricky = "a \"quoted\" word, a back\\slash,\na new line and 秒杀";
        let (status, b) = body(ApiError::BadRequest(tricky.into())).await;
        assert_eq!(
            (status, b.code.as_str()),
            (StatusCode::BAD_REQUEST, "BAD_REQUEST")
        );
        assert_eq!(b.message, tricky);
    }

    #[tokio::test]
    async fn an_internal_error_says_nothing_of_its_cause() {
        let e = ServiceError::Internal(Box::new(std::io::Error::other(
            "password=hunter2 in the DSN",
        )));
        let (status, b) = body(e.into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            (b.code.as_str(), b.message.as_str()),
            ("INTERNAL", "internal error")
        );
    }
}
