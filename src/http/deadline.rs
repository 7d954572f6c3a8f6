//! The API's request deadline as a tower layer: past it, 503 UNAVAILABLE
//! with the JSON error body (never a hang). An order still in the pipeline
//! then commits or is given back as usual; its buyer finds it under My
//! orders.
//!
//! A layer of its own rather than `middleware::from_fn`: that one boxes the
//! request's future and wraps the inner service in another boxed service on
//! every request, which showed in the profile of the sold-out answer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tokio::task::Unconstrained;
use tokio::time::Sleep;
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
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        DeadlineFuture {
            inner: self.inner.call(req),
            timer: None,
            limit: self.limit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner answer, or 503 past the deadline. The timer is set when the
    /// answer is first found not ready (the first poll follows the call at
    /// once), so the deadline counts from there: an answer ready on its
    /// first poll — the sold-out flag's, a refused token's, a cached
    /// item's — costs no timer at all. The timer is polled outside tokio's
    /// co-operative budget (as `tokio::time::timeout` does once the inner
    /// future spent it): an answer that spends the budget on every poll is
    /// still cut off.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Option<Unconstrained<Sleep>>,
        limit: Duration,
    }
}

impl<F> Future for DeadlineFuture<F>
where
    F: Future<Output = Answer>,
{
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let mut this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        if this.timer.is_none() {
            this.timer
                .set(Some(tokio::task::unconstrained(tokio::time::sleep(
                    *this.limit,
                ))));
        }
        if let Some(timer) = this.timer.as_pin_mut() {
            ready!(timer.poll(cx));
        }
        Poll::Ready(past_deadline())
    }
}

/// 503: the deadline passed first.
fn past_deadline() -> Answer {
    metrics::counter!("seckill_http_deadline_exceeded_total").increment(1);
    Ok(ApiError::from(ServiceError::unavailable(
        "no answer within the request deadline; retry (an order's outcome shows under your orders)",
    ))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    fn answering_after(
        delay: Duration,
    ) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone {
        tower::service_fn(move |_req: Request| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(StatusCode::NO_CONTENT.into_response())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_the_deadline_passes_and_a_late_one_is_503() {
        let limit = Duration::from_secs(2);
        let svc = DeadlineLayer::new(limit).layer(answering_after(Duration::ZERO));
        let r = svc
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "ready on its first poll"
        );

        let svc = DeadlineLayer::new(limit).layer(answering_after(Duration::from_millis(1_999)));
        let r = svc
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "pending, then in time");

        let started = tokio::time::Instant::now();
        let svc = DeadlineLayer::new(limit).layer(answering_after(Duration::from_secs(60)));
        let r = svc
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "1");
        assert_eq!(
            started.elapsed(),
            limit,
            "cut off at the deadline, not at the answer"
        );
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "UNAVAILABLE");
    }

    /// `tokio::time::timeout` polls its timer outside the co-operative
    /// budget once the inner future spent it; so does this one.
    #[tokio::test]
    async fn an_answer_that_spends_its_budget_on_every_poll_is_still_cut_off() {
        let busy = tower::service_fn(|_req: Request| async {
            loop {
                tokio::task::consume_budget().await;
            }
            #[allow(unreachable_code)]
            Ok::<Response, Infallible>(StatusCode::OK.into_response())
        });
        let svc = DeadlineLayer::new(Duration::from_millis(50)).layer(busy);
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            svc.oneshot(Request::new(axum::body::Body::empty())),
        )
        .await
        .expect("cut off at its deadline")
        .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
