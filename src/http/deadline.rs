//! The API's request deadline as a tower layer: past it, 503 UNAVAILABLE
//! with the JSON error body (never a hang). An order still in the pipeline
//! then commits or is given back as usual; its buyer finds it under My
//! orders.
//!
//! A layer of its own rather than `middleware::from_fn`: that one boxes the
//! request's future and wraps the inner service in another boxed service on
//! every request, which showed in the profile of the sold-out answer.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::future::{FutureExt, Map};
use tokio::time::error::Elapsed;
use tokio::time::Timeout;
use tower::{Layer, Service};

use super::error::ApiError;
use crate::service::ServiceError;

/// Answers 503 when the inner service has not answered within `limit`.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    limit: Duration,
}

impl DeadlineLayer {
    pub fn new(limit: Duration) -> Self {
        DeadlineLayer { limit }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
}

type Answer = Result<Response, Infallible>;

impl<S> Service<Request> for Deadline<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Map<Timeout<S::Future>, fn(Result<Answer, Elapsed>) -> Answer>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        tokio::time::timeout(self.limit, self.inner.call(req)).map(past_deadline)
    }
}

/// The inner answer, or 503 when the deadline passed first.
fn past_deadline(answer: Result<Answer, Elapsed>) -> Answer {
    answer.unwrap_or_else(|_| {
        metrics::counter!("seckill_http_deadline_exceeded_total").increment(1);
        Ok(ApiError::from(ServiceError::unavailable(
            "no answer within the request deadline; retry (an order's outcome shows under your orders)",
        ))
        .into_response())
    })
}
