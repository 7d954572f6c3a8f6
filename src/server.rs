//! Running the server: bind, serve, shut down gracefully on SIGTERM/Ctrl-C.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::TokioIo;
use tower::Service as _;

use crate::config::{Config, Secret};

/// Builds the app from `config` and serves until a shutdown signal.
pub async fn serve(mut config: Config) -> anyhow::Result<()> {
    if config.demo && config.admin_token.is_none() {
        let token = crate::service::users::random_token();
        tracing::info!(admin_token = %token, "demo mode: admin token for this run (set SECKILL_ADMIN_TOKEN to choose one)");
        config.admin_token = Some(Secret(token));
    }
    let addr = config.listen_addr()?;
    let demo = config.demo;
    // Bind first: a taken port stops start-up before anything is written.
    let listener = listen(addr, config.http_backlog).with_context(|| {
        format!("cannot listen on {addr} (set SECKILL_HTTP_ADDR or --addr to another port)")
    })?;
    let app = crate::app::build(config).await?;
    if demo {
        crate::demo::seed(&app.state)
            .await
            .context("cannot seed the demo")?;
    }
    tracing::info!(%addr, database = %crate::cli::redact(&app.state.config.database_url),
        strategy = app.state.config.order_strategy.as_str(), "seckill serving; open http://{addr}/");
    let router = crate::http::router(app.state.clone());
    let bound = Duration::from_secs(app.state.config.shutdown_timeout_secs);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let orders = app.state.orders.clone();
    let server = serve_http1(listener, router, async move {
        shutdown_signal().await;
        // No new orders; those admitted finish (their batches commit or
        // give their reservations back) before the process ends.
        orders.drain();
        let _ = stopping_tx.send(());
    });
    tokio::pin!(server);
    // Serve; once the signal came, give requests in flight (and the batches
    // they wait for) at most `shutdown_timeout_secs` to finish. Anything not
    // committed by then is settled by the reconciler from `stock_log`.
    tokio::select! {
        r = &mut server => r?,
        _ = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(bound).await;
        } => {
            tracing::warn!(bound_secs = bound.as_secs(), "requests still in flight at the shutdown bound; exiting anyway");
        }
    }
    // Orders admitted on connections that are gone still finish their
    // batches (bounded too), then the last refusal counts are handed over
    // and the instance leaves the list.
    let drained_by = tokio::time::Instant::now() + bound;
    while !app.state.orders.idle() && tokio::time::Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Store calls of requests cut off (deadline, client gone) still run:
    // each ends committed or rolled back, its connection clean.
    app.store_tasks.close();
    if tokio::time::timeout_at(drained_by, app.store_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            calls = app.store_tasks.len(),
            "store calls still running at the shutdown bound; exiting anyway"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = app.state.monitor.flush().await;
    let _ = app.state.monitor.leave().await;
    tracing::info!("seckill stopped");
    Ok(())
}

/// A listening socket with room for `backlog` connections not yet accepted
/// (the kernel caps it at `net.core.somaxconn`): a crowd connecting at once
/// (or nginx opening its upstream connections for it) must not overflow the
/// queue — dropped SYNs are retried after a second, past nginx's connect
/// timeout.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

/// A request's answer as hyper awaits it.
type RouterFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Serves `router` over HTTP/1.1 (what nginx and browsers speak to an
/// instance) until `shutdown` completes, then stops accepting, lets every
/// connection finish its request in flight and returns once all are closed.
///
/// An HTTP/1-only connection is what makes an idle keep-alive connection
/// cheap (its task holds hyper's HTTP/1 state and buffers, nothing for
/// HTTP/2); sockets get `TCP_NODELAY`, so a small answer is never held back
/// waiting for the client's ACK. Each request carries `ConnectInfo` (the
/// peer address) like `axum::serve`'s.
pub async fn serve_http1(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let live = Arc::new(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or memory: the listener stays;
                    // back off a little so the loop does not spin. Errors of
                    // one connection (reset before accepted): go on.
                    if matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105)) {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        // hyper keeps a box the size of the service's future in every
        // connection, idle or not; the request's future boxed here makes
        // that box a pointer (the future itself lives only while a request
        // does). A router is always ready: no `poll_ready` to wait for.
        let service = hyper::service::service_fn(
            move |req: axum::http::Request<hyper::body::Incoming>| -> RouterFuture {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                Box::pin(router.clone().call(req))
            },
        );
        let mut stop = stop_rx.clone();
        let live = live.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(live);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while Arc::strong_count(&live) > 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal: no new connections; finishing requests in flight");
}
