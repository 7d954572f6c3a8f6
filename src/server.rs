//! Running the server: bind, serve, shut down gracefully on SIGTERM/Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{Config, Secret};
use crate::http::connection::{serve_http1, ConnectionOptions};

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
    // Listen once built: until then a connection is refused (nginx tries
    // the next instance) rather than queued for as long as the start takes
    // (a broker not yet registered holds it up to
    // SECKILL_ROCKETMQ_START_TIMEOUT_MS).
    let taken =
        || format!("cannot listen on {addr} (set SECKILL_HTTP_ADDR or --addr to another port)");
    let socket = bind(addr).with_context(taken)?;
    // The address bound, as the admin's instance list shows it: a host name
    // resolved, port 0 the port chosen.
    if let Ok(bound) = socket.local_addr() {
        config.http_addr = bound.to_string();
    }
    let backlog = config.http_backlog;
    // One embedded process per data file, before anything is opened.
    let _data_lock = crate::process_lock::claim(&config).context(
        "a second instance on the same database would sell its units again: stop the other \
         one, give this one another SECKILL_DATABASE_URL, or set SECKILL_REDIS_URL (and \
         SECKILL_ROCKETMQ_NAMESRV) to run several instances",
    )?;
    let app = crate::app::build(config).await?;
    let listener = match socket.listen(backlog.max(1)).with_context(taken) {
        Ok(l) => l,
        Err(e) => {
            app.leave().await;
            return Err(e);
        }
    };
    let served = serve_app(&app, listener, demo, addr).await;
    // On every way out: the node id (a configured id's restart takes it at
    // once), then the broker's groups.
    app.leave().await;
    if served.is_ok() {
        tracing::info!("seckill stopped");
    }
    served
}

/// Serves `app` until the shutdown signal, then lets requests in flight
/// and the batches they wait for finish (bounded).
async fn serve_app(
    app: &crate::app::App,
    listener: tokio::net::TcpListener,
    demo: bool,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    if demo {
        crate::demo::seed(&app.state)
            .await
            .context("cannot seed the demo")?;
    }
    tracing::info!(%addr, database = %crate::config::redact(&app.state.config.database_url),
        strategy = app.state.config.order_strategy.as_str(), "seckill serving; open http://{addr}/");
    for warning in app.state.config.warnings() {
        tracing::warn!("{warning}");
    }
    let router = crate::http::router(app.state.clone());
    let bound = Duration::from_secs(app.state.config.shutdown_timeout_secs);
    // Once the signal came: the one instant by which everything below is
    // done, whatever is still running (`shutdown_timeout_secs` from the
    // signal; the hand-over to Redis after it is bounded by its time-out).
    let (stop_by_tx, mut stop_by) = tokio::sync::watch::channel(None::<tokio::time::Instant>);
    let orders = app.state.orders.clone();
    let c = &app.state.config;
    let options = ConnectionOptions {
        park_idle: c.http_park_idle,
        inline_wakes: c.http_inline_wakes,
        idle_timeout: (c.http_idle_timeout_secs > 0)
            .then(|| Duration::from_secs(c.http_idle_timeout_secs)),
    };
    let server = serve_http1(listener, router, options, async move {
        shutdown_signal().await;
        let _ = stop_by_tx.send(Some(tokio::time::Instant::now() + bound));
        // No new orders; those admitted finish (their batches commit or
        // give their reservations back) before the process ends.
        orders.drain();
    });
    tokio::pin!(server);
    // Serve; once the signal came, requests in flight (and the batches
    // they wait for) finish by the stop instant. Anything not committed by
    // then is settled by the reconciler from `stock_log`.
    tokio::select! {
        r = &mut server => r?,
        _ = async {
            match stop_by.wait_for(Option::is_some).await.ok().and_then(|by| *by) {
                Some(by) => tokio::time::sleep_until(by).await,
                None => std::future::pending().await,
            }
        } => {
            tracing::warn!(bound_secs = bound.as_secs(), "requests still in flight at the shutdown bound; exiting anyway");
        }
    }
    let stopped_by = *stop_by.borrow();
    let drained_by = stopped_by.unwrap_or_else(|| tokio::time::Instant::now() + bound);
    // Orders admitted on connections that are gone still finish their
    // batches (by the same instant), then the last refusal counts are
    // handed over and the instance leaves the list.
    while !app.state.orders.idle() && tokio::time::Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Store calls of requests cut off (deadline, client gone) still run:
    // each ends committed or rolled back, its connection clean; their
    // seckill tokens go back to their buyers.
    app.context.background.close();
    if tokio::time::timeout_at(drained_by, app.context.background.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = app.context.background.len(),
            "store calls or token give-backs still running at the shutdown bound; exiting anyway"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = app.state.monitor.flush().await;
    let _ = app.state.monitor.leave().await;
    Ok(())
}

/// A socket bound to `addr`, to listen on with room for
/// `http_backlog` connections not yet accepted (the kernel caps it at
/// `net.core.somaxconn`): a crowd connecting at once (or nginx opening its
/// upstream connections for it) must not overflow the queue — dropped SYNs
/// are retried after a second, past nginx's connect timeout.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
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
