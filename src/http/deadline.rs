//! The API's request deadline as a tower layer: past it, 503 UNAVAILABLE
//! with the JSON error body (never a hang).
//!
//! Each request that may write (any method but GET, HEAD and OPTIONS)
//! carries a [`DeadlineHold`]: an order placement as a request extension
//! (its service holds it), every other such request in its task
//! (`deadline_hold::scope`), where the store's writes hold it as they
//! start. A request that reached its point
//! of no return — an order its local transaction, any other its first
//! write — is held: past the deadline it is waited for (its outcome comes
//! within that step's own bound) rather than answered 503 while its write
//! commits behind that answer (API.md: a 503 wrote nothing). A request cut
//! off first writes nothing more: its order is given back, a write not
//! started never starts. A held request still unanswered `grace` past the
//! deadline is answered 503 with its outcome unknown (a buyer finds the
//! order under My orders): the grace covers the send, the transaction and
//! settling a failed one at their configured bounds, so only a sequence of
//! slow steps beyond them (a batch committed order by order after a unique
//! key broke) gets there; counted apart,
//! `seckill_http_order_outcome_unknown_total` (orders) and
//! `seckill_http_write_outcome_unknown_total` (other writes).
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
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use tokio::task::futures::TaskLocalFuture;
use tokio::task::Unconstrained;
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::admin::BULK_USERS_PATH;
use super::error::ApiError;
use super::orders::ORDERS_PATH;
use crate::service::deadline_hold::{self, DeadlineHold};
use crate::service::ServiceError;

/// Answers 503 when the inner service has not answered within `limit`
/// (a held request: within `limit` + `grace`); the bulk sign-up, all
/// password hashes before its one write, within `bulk_limit`.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    limit: Duration,
    grace: Duration,
    bulk_limit: Duration,
}

impl DeadlineLayer {
    pub fn new(limit: Duration, grace: Duration) -> Self {
        DeadlineLayer {
            limit,
            grace,
            bulk_limit: limit,
        }
    }

    /// The bulk sign-up's own deadline (`bulk_users_timeout_ms`).
    pub fn bulk_limit(self, bulk_limit: Duration) -> Self {
        DeadlineLayer { bulk_limit, ..self }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            limit: self.limit,
            grace: self.grace,
            bulk_limit: self.bulk_limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
    grace: Duration,
    bulk_limit: Duration,
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

    fn call(&mut self, mut req: Request) -> Self::Future {
        // Only a request that may write can reach a point of no return;
        // reads pay for no hold (its allocation and task-local).
        let method = req.method();
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return DeadlineFuture {
                inner: Inner::Plain {
                    answer: self.inner.call(req),
                },
                timer: None,
                limit: self.limit,
                grace: self.grace,
                hold: None,
                order: false,
                extended: false,
            };
        }
        let hold = DeadlineHold::default();
        let order = *method == Method::POST && req.uri().path() == ORDERS_PATH;
        let limit = if !order && *method == Method::POST && req.uri().path() == BULK_USERS_PATH {
            self.bulk_limit
        } else {
            self.limit
        };
        // An order holds its own hold, the extension (its write-behind
        // writes run in the batch workers, the pure-database path holds
        // before its transaction): it pays for no task-local.
        let inner = if order {
            req.extensions_mut().insert(hold.clone());
            Inner::Plain {
                answer: self.inner.call(req),
            }
        } else {
            Inner::Scoped {
                answer: deadline_hold::scope(hold.clone(), self.inner.call(req)),
            }
        };
        DeadlineFuture {
            inner,
            timer: None,
            limit,
            grace: self.grace,
            hold: Some(hold),
            order,
            extended: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer: a read's as it is, a possible write's
    /// with its hold in the task.
    #[project = InnerProj]
    pub enum Inner<F> {
        Plain { #[pin] answer: F },
        Scoped { #[pin] answer: TaskLocalFuture<DeadlineHold, F> },
    }
}

impl<F: Future<Output = Answer>> Future for Inner<F> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.project() {
            InnerProj::Plain { answer } => answer.poll(cx),
            InnerProj::Scoped { answer } => answer.poll(cx),
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
        inner: Inner<F>,
        #[pin]
        timer: Option<Unconstrained<Sleep>>,
        limit: Duration,
        grace: Duration,
        hold: Option<DeadlineHold>,
        // An order placement (its outcome unknown is told as an order's).
        order: bool,
        // The deadline passed with the request held: the timer is the
        // grace, the last bound.
        extended: bool,
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
        loop {
            if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                ready!(timer.poll(cx));
            }
            if *this.extended {
                return Poll::Ready(outcome_unknown(*this.order));
            }
            if this.hold.as_ref().is_none_or(DeadlineHold::cut_off) {
                return Poll::Ready(past_deadline());
            }
            // Held: its order or write is committing; its answer is the
            // outcome.
            *this.extended = true;
            this.timer
                .set(Some(tokio::task::unconstrained(tokio::time::sleep(
                    *this.grace,
                ))));
        }
    }
}

/// 503: the deadline passed first.
fn past_deadline() -> Answer {
    metrics::counter!("seckill_http_deadline_exceeded_total").increment(1);
    Ok(ApiError::from(ServiceError::unavailable(
        "no answer within the request deadline; retry",
    ))
    .into_response())
}

/// 503: a held request (its order or write committing) still unanswered
/// `grace` past the deadline.
fn outcome_unknown(order: bool) -> Answer {
    let (counter, what, message) = if order {
        (
            "seckill_http_order_outcome_unknown_total",
            "an order",
            "the order's outcome is not known yet; check your orders shortly",
        )
    } else {
        (
            "seckill_http_write_outcome_unknown_total",
            "a write",
            "the request's outcome is not known yet (its write had started); check before retrying",
        )
    };
    metrics::counter!(counter).increment(1);
    tracing::error!(
        "{what} past its point of no return is unanswered past the deadline and its grace"
    );
    Ok(ApiError::from(ServiceError::unavailable(message)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::sync::Arc;
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
        let svc = DeadlineLayer::new(limit, limit).layer(answering_after(Duration::ZERO));
        let r = svc
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "ready on its first poll"
        );

        let svc =
            DeadlineLayer::new(limit, limit).layer(answering_after(Duration::from_millis(1_999)));
        let r = svc
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "pending, then in time");

        let started = tokio::time::Instant::now();
        let svc = DeadlineLayer::new(limit, limit).layer(answering_after(Duration::from_secs(60)));
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

    fn holding_after(
        hold_at: Duration,
        delay: Duration,
    ) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone {
        tower::service_fn(move |req: Request| async move {
            let hold = req.extensions().get::<DeadlineHold>().unwrap().clone();
            tokio::time::sleep(hold_at).await;
            if !hold.hold() {
                return Ok::<_, Infallible>(StatusCode::CONFLICT.into_response());
            }
            tokio::time::sleep(delay).await;
            Ok(StatusCode::CREATED.into_response())
        })
    }

    fn order_request() -> Request {
        Request::post(ORDERS_PATH)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    /// The same three requests to `path` (deadline 2 s, grace 5 s), each
    /// from `service(point of no return at, answer that much later)`:
    /// held in time and answered late, held and never answered within the
    /// grace, not held by the deadline.
    async fn held_requests_to<S>(path: &str, service: impl Fn(Duration, Duration) -> S)
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        let limit = Duration::from_secs(2);
        let grace = Duration::from_secs(5);
        let call = |svc: S| async move {
            let started = tokio::time::Instant::now();
            let req = Request::post(path).body(axum::body::Body::empty()).unwrap();
            let r: Response = DeadlineLayer::new(limit, grace)
                .layer(svc)
                .oneshot(req)
                .await
                .unwrap();
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .map(|v| v["message"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            (status, started.elapsed(), message.contains("not known"))
        };
        let s = Duration::from_secs;
        assert_eq!(
            call(service(s(1), s(3))).await,
            (StatusCode::CREATED, s(4), false),
            "{path}: held before the deadline: its outcome, late"
        );
        assert_eq!(
            call(service(s(1), s(60))).await,
            (StatusCode::SERVICE_UNAVAILABLE, limit + grace, true),
            "{path}: the grace bounds a held request, whose outcome is then unknown"
        );
        assert_eq!(
            call(service(s(3), Duration::ZERO)).await,
            (StatusCode::SERVICE_UNAVAILABLE, limit, false),
            "{path}: not held by the deadline: cut off at it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_order_is_waited_for_past_the_deadline_within_its_grace() {
        held_requests_to(ORDERS_PATH, holding_after).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_carries_its_hold_and_every_request_that_may_write_one_in_its_task() {
        let seen = tower::service_fn(|req: Request| async move {
            let status = match req.extensions().get::<DeadlineHold>() {
                Some(_) => StatusCode::CREATED,
                None => StatusCode::NO_CONTENT,
            };
            Ok::<_, Infallible>(status.into_response())
        });
        let limit = Duration::from_secs(2);
        let layer = DeadlineLayer::new(limit, Duration::from_secs(5));
        let request = |method: Method, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let status = |r: Result<Response, Infallible>| r.unwrap().status();
        let order = layer
            .layer(seen)
            .oneshot(request(Method::POST, ORDERS_PATH));
        assert_eq!(status(order.await), StatusCode::CREATED);
        let list = layer.layer(seen).oneshot(request(Method::GET, ORDERS_PATH));
        assert_eq!(status(list.await), StatusCode::NO_CONTENT);
        // A write started before the deadline and ending after it: waited
        // for where the request may write, cut off where it only reads.
        let writes = writing_after(Duration::from_secs(1), Duration::from_secs(2));
        for method in [Method::POST, Method::PATCH, Method::PUT, Method::DELETE] {
            let r = layer
                .layer(writes.clone())
                .oneshot(request(method.clone(), "/api/v1/admin/items"));
            assert_eq!(status(r.await), StatusCode::CREATED, "{method}");
        }
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            let r = layer
                .layer(writes.clone())
                .oneshot(request(method.clone(), "/api/v1/items"));
            assert_eq!(status(r.await), StatusCode::SERVICE_UNAVAILABLE, "{method}");
        }
    }

    fn writing_after(
        write_at: Duration,
        delay: Duration,
    ) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone {
        tower::service_fn(move |_req: Request| async move {
            tokio::time::sleep(write_at).await;
            if !deadline_hold::hold_current() {
                return Ok::<_, Infallible>(StatusCode::CONFLICT.into_response());
            }
            tokio::time::sleep(delay).await;
            Ok(StatusCode::CREATED.into_response())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_started_before_the_deadline_is_waited_for_within_the_grace() {
        held_requests_to("/api/v1/admin/items", writing_after).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_cut_off_cannot_be_held_afterwards() {
        let hold_slot: Arc<parking_lot::Mutex<Option<DeadlineHold>>> = Arc::default();
        let slot = hold_slot.clone();
        let svc = tower::service_fn(move |req: Request| {
            *slot.lock() = req.extensions().get::<DeadlineHold>().cloned();
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<Response, Infallible>(StatusCode::CREATED.into_response())
            }
        });
        let r = DeadlineLayer::new(Duration::from_secs(1), Duration::from_secs(5))
            .layer(svc)
            .oneshot(order_request())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let hold = hold_slot.lock().clone().unwrap();
        assert!(!hold.hold(), "its order is given back, not committed");
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
        let svc =
            DeadlineLayer::new(Duration::from_millis(50), Duration::from_millis(50)).layer(busy);
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
