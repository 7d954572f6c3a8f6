//! Requests counted and timed by route, method and status, as a tower layer.
//!
//! `seckill_http_requests_total{method, route, status}` and
//! `seckill_http_request_duration_seconds{method, route}`. The route is the
//! matched path (`/api/v1/items/{id}`), `/static` for the pages' fallback;
//! a method outside the standard ones is counted as `OTHER`, so a client
//! inventing methods cannot grow the metrics without bound.
//!
//! A layer of its own rather than `middleware::from_fn` (which boxes the
//! request's future and clones the inner service into a boxed one on every
//! request), and the metric handles are looked up once per thread and
//! route, not built from three fresh label strings on every request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use metrics::{Counter, Histogram};
use tower::{Layer, Service};

/// Wraps every route (and the fallback) of a router with [`RequestMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestMetricsLayer;

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics { inner }
    }
}

/// Counts and times the requests of the service it wraps.
#[derive(Debug, Clone)]
pub struct RequestMetrics<S> {
    inner: S,
}

impl<S> Service<Request> for RequestMetrics<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = method_label(req.method());
        ResponseFuture {
            inner: self.inner.call(req),
            started,
            method,
            route,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, counted and timed when it is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        method: &'static str,
        route: Option<MatchedPath>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.inner.poll(cx));
        if let Ok(resp) = &answer {
            // Every API path has a route (unknown ones `/api/{*rest}`); the
            // rest are the pages' fallback.
            let route = this.route.as_ref().map_or("/static", |p| p.as_str());
            record(
                route,
                this.method,
                resp.status().as_u16(),
                this.started.elapsed(),
            );
        }
        Poll::Ready(answer)
    }
}

/// The method's label: the standard methods by name, any other `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// One route's metric handles, by method (latency) and method and status
/// (count): a handful each, searched in order.
#[derive(Default)]
struct RouteHandles {
    latency: Vec<(&'static str, Histogram)>,
    count: Vec<(&'static str, u16, Counter)>,
}

thread_local! {
    /// The handles this thread has used, by route. Bounded: the routes are
    /// the router's, the methods and statuses a fixed set.
    static HANDLES: RefCell<HashMap<Box<str>, RouteHandles>> = RefCell::new(HashMap::new());
}

fn record(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    HANDLES.with_borrow_mut(|routes| match routes.get_mut(route) {
        Some(handles) => handles.record(route, method, status, elapsed),
        None => routes
            .entry(route.into())
            .or_default()
            .record(route, method, status, elapsed),
    });
}

impl RouteHandles {
    fn record(&mut self, route: &str, method: &'static str, status: u16, elapsed: Duration) {
        let count = match self
            .count
            .iter()
            .position(|(m, s, _)| *s == status && *m == method)
        {
            Some(i) => i,
            None => {
                self.count.push((
                    method,
                    status,
                    metrics::counter!("seckill_http_requests_total",
                        "method" => method, "route" => route.to_owned(), "status" => status.to_string()),
                ));
                self.count.len() - 1
            }
        };
        self.count[count].2.increment(1);
        let latency = match self.latency.iter().position(|(m, _)| *m == method) {
            Some(i) => i,
            None => {
                self.latency.push((
                    method,
                    metrics::histogram!("seckill_http_request_duration_seconds",
                        "method" => method, "route" => route.to_owned()),
                ));
                self.latency.len() - 1
            }
        };
        self.latency[latency].1.record(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_ones_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&invented), "OTHER");
    }
}
