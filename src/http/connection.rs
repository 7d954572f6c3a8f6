//! Serving HTTP/1.1 connections, and parking the idle ones.
//!
//! An instance is the back end of nginx's upstream keep-alive connections
//! and, behind any other front, of a crowd's own: most of its connections
//! are idle between two requests most of the time. hyper keeps an idle
//! connection's whole state — an 8 KiB read buffer, an 8 KiB write buffer,
//! the last answer's header map, the dispatcher — about 10 KiB resident a
//! connection, 100 MB for 10,000 (docs/BENCHMARKS.md).
//!
//! So, as nginx does with its own keep-alive connections, an idle one is
//! *parked*: once hyper has answered every request it read and written
//! every byte, and waits for the next request, its state is taken apart
//! (`graceful_shutdown` on an idle connection closes it without a word on
//! the wire; `into_parts` hands back the socket, any bytes hyper read but
//! did not use, and the service). The connection's task then holds the
//! socket and little else until the socket is readable again; the next
//! request meets a fresh hyper connection, fed first the bytes the last one
//! left. Nothing a client sees changes: no `Connection: close`, no byte
//! lost or reordered (tests below). Off with `SECKILL_HTTP_PARK_IDLE=false`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Body as _, Bytes, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::Service as _;

use super::inline_wakes::InlineWakes;

/// How connections are served (config: `http_park_idle`,
/// `http_inline_wakes`, `http_idle_timeout_secs`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionOptions {
    /// Park idle keep-alive connections (module doc).
    pub park_idle: bool,
    /// The connection's own wake-ups answered in its poll (inline_wakes.rs).
    pub inline_wakes: bool,
    /// How long a connection may wait for its next request, and a request
    /// head take to arrive whole (`None`: no bound); past it, the
    /// connection is closed. Parked, the wait is the parked time and the
    /// head's from its first byte; unparked, hyper bounds both together
    /// from the last answer. Longer than nginx's upstream
    /// `keepalive_timeout`, so nginx closes its idle upstream connections
    /// first and never sends a request on one being closed.
    pub idle_timeout: Option<Duration>,
}

/// A request's answer as hyper awaits it.
type Answer =
    Pin<Box<dyn Future<Output = Result<axum::http::Response<Tracked>, Infallible>> + Send>>;

/// Serves `router` over HTTP/1.1 (what nginx and browsers speak to an
/// instance) until `shutdown` completes, then stops accepting, lets every
/// connection finish its request in flight and returns once all are closed.
///
/// An HTTP/1-only connection is what makes an idle keep-alive connection
/// cheap (its task holds hyper's HTTP/1 state and buffers, nothing for
/// HTTP/2) — and, with `park_idle`, not even those (module doc). Sockets
/// get `TCP_NODELAY`, so a small answer is never held back waiting for the
/// client's ACK. Each request carries `ConnectInfo` (the peer address) like
/// `axum::serve`'s.
pub async fn serve_http1(
    listener: tokio::net::TcpListener,
    router: Router,
    options: ConnectionOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // One builder for all connections: its timer is shared, not made anew
    // for each request. hyper's head time-out runs whenever it waits for a
    // head, idle or not, so it is the idle time-out: shorter, it would close
    // idle connections under nginx (a connection left unparked after a body
    // it did not read, say).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.idle_timeout);
    let builder = Arc::new(builder);
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
        tokio::spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            builder.clone(),
            options,
            stop_rx.clone(),
            live.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while Arc::strong_count(&live) > 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One connection, from accept to close: hyper while a request is read,
/// worked on or answered; parked (only the socket) in between.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    options: ConnectionOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
    live: Arc<()>,
) {
    let activity = Arc::new(Activity::default());
    let mut service = {
        let activity = activity.clone();
        // hyper keeps a box the size of the service's future in every
        // connection; the request's future boxed here makes that box a
        // pointer (the future itself lives only while a request does). A
        // router is always ready: no `poll_ready` to wait for.
        hyper::service::service_fn(
            move |req: axum::http::Request<hyper::body::Incoming>| -> Answer {
                let in_flight = InFlight::request(&activity);
                let mut req = req.map(|body| {
                    let reading = (!body.is_end_stream()).then(|| InFlight::hold(&activity));
                    axum::body::Body::new(Reading { body, reading })
                });
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let answer = router.clone().call(req);
                Box::pin(async move {
                    let res = answer.await?;
                    Ok(res.map(|body| Tracked {
                        body,
                        _in_flight: in_flight,
                    }))
                })
            },
        )
    };
    // The connection's own wake-ups (hyper's body channel) answered in its
    // poll, not by the scheduler (inline_wakes.rs).
    let wakes = InlineWakes::default();
    let mut io = Watched {
        stream,
        unread: Bytes::new(),
        activity: activity.clone(),
    };
    loop {
        if io.unread.is_empty() {
            // Parked, or new: wait for the first byte of a request, for
            // at most the idle time-out.
            let idle_for = async {
                match options.idle_timeout {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = io.stream.readable() => if ready.is_err() { break },
                _ = stop.changed() => break,
                _ = idle_for => break,
            }
        }
        // Boxed: the task's own future stays small while parked.
        let mut conn = Box::new(builder.serve_connection(TokioIo::new(io), service));
        activity.served.store(false, Ordering::Relaxed);
        tokio::select! {
            step = std::future::poll_fn(|cx| {
                let polled = if options.inline_wakes {
                    wakes.poll(cx, |cx| Pin::new(&mut *conn).poll(cx))
                } else {
                    Pin::new(&mut *conn).poll(cx)
                };
                match polled {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending if options.park_idle && activity.idle() => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }) => match step {
                Some(Err(e)) => {
                    tracing::trace!(error = %e, "connection ended with an error");
                    break;
                }
                Some(Ok(())) => break,
                None => {}
            },
            _ = stop.changed() => {
                // Finish the request in flight, then close.
                Pin::new(&mut *conn).graceful_shutdown();
                let _ = (&mut *conn).await;
                break;
            }
        }
        // Idle: closing it now says nothing on the wire (hyper only marks
        // itself closed), and hands back what it holds.
        Pin::new(&mut *conn).graceful_shutdown();
        if let Err(e) = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await {
            tracing::trace!(error = %e, "connection ended with an error");
            break;
        }
        let parts = conn.into_parts();
        io = parts.io.into_inner();
        service = parts.service;
        // Bytes hyper read but did not use (a pipelined request, the start
        // of the next one) come first next time — copied, so hyper's read
        // buffer is freed — then any it was given and did not read.
        if !parts.read_buf.is_empty() {
            let mut unread = Vec::with_capacity(parts.read_buf.len() + io.unread.len());
            unread.extend_from_slice(&parts.read_buf);
            unread.extend_from_slice(&io.unread);
            io.unread = Bytes::from(unread);
        }
        // Empty lines before a request line are ignored (RFC 9112 § 2.2;
        // some clients send one after a body): parked, not kept.
        if io.unread.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            io.unread = Bytes::new();
        }
    }
    drop(live);
}

/// What a connection's socket and service tell the task that drives it.
#[derive(Default)]
struct Activity {
    /// Requests between hyper calling the service and dropping the answer's
    /// body (sent, or the connection gone).
    in_flight: AtomicUsize,
    /// The socket's last write or flush would have blocked: hyper still
    /// holds bytes to send.
    write_blocked: AtomicBool,
    /// The hyper connection now serving has taken a request. One that has
    /// not is reading its first (a parked connection's leftover start of
    /// one, or a wake-up with nothing to read): parking it again would
    /// only go round.
    served: AtomicBool,
    /// A request's body was dropped before its end (answered without
    /// reading it all): hyper drains the rest or closes the connection, as
    /// it decides; parked meanwhile, the rest would be read as a request.
    abandoned: AtomicBool,
}

impl Activity {
    /// A request answered, nothing in flight and nothing left to send:
    /// hyper, between two of its polls, can only be waiting for the next
    /// request (or reading its head, whose bytes it hands back).
    fn idle(&self) -> bool {
        self.served.load(Ordering::Relaxed)
            && !self.abandoned.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
            && !self.write_blocked.load(Ordering::Relaxed)
    }
}

/// A request, or its body, in flight; it ends when dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    /// A request whose head hyper has read: any body before it is behind.
    fn request(activity: &Arc<Activity>) -> InFlight {
        activity.served.store(true, Ordering::Relaxed);
        activity.abandoned.store(false, Ordering::Relaxed);
        InFlight::hold(activity)
    }

    fn hold(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's body, in flight until read to its end; dropped before, the
/// connection is not parked until hyper has read the next request's head.
struct Reading {
    body: hyper::body::Incoming,
    reading: Option<InFlight>,
}

impl hyper::body::Body for Reading {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.body.is_end_stream() {
            this.reading = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if let Some(reading) = &self.reading {
            reading.0.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

/// An answer's body, holding its request in flight until hyper drops it.
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: bytes a parked connection was left with
/// come first, and whether a write blocked is noted.
struct Watched {
    stream: TcpStream,
    unread: Bytes,
    activity: Arc<Activity>,
}

impl Watched {
    fn note<T>(&self, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        self.activity
            .write_blocked
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        this.note(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on a free port; its shutdown trigger and its task.
    fn options(park_idle: bool) -> ConnectionOptions {
        ConnectionOptions {
            park_idle,
            inline_wakes: true,
            idle_timeout: Some(Duration::from_secs(60)),
        }
    }

    async fn server(
        options: ConnectionOptions,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let router = Router::new()
            .route(
                "/n/{n}",
                get(|p: axum::extract::Path<u32>| async move { format!("n={}", p.0) }),
            )
            .route("/echo", post(|body: String| async move { body }))
            .route("/ignore", post(|| async { "ignored" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "slow"
                }),
            )
            .route("/big", get(|| async { "x".repeat(4 << 20) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_http1(listener, router, options, async move {
            let _ = rx.await;
        }));
        (addr, tx, task)
    }

    /// Reads one answer (head and `Content-Length` body) off `s`, leaving
    /// any bytes after it in `pending`.
    async fn answer(s: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(pending[..end].to_vec()).unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if pending.len() >= end + 4 + len {
                    let body = String::from_utf8(pending[end + 4..end + 4 + len].to_vec()).unwrap();
                    pending.drain(..end + 4 + len);
                    return (head, body);
                }
            }
            let mut buf = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(
                n > 0,
                "closed before a whole answer; got {:?}",
                String::from_utf8_lossy(pending)
            );
            pending.extend_from_slice(&buf[..n]);
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_keep_alive_connection_is_answered_across_idle_spells_parked_or_not() {
        for park in [true, false] {
            let (addr, stop, task) = server(options(park)).await;
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut pending = Vec::new();
            for n in 0..5 {
                s.write_all(format!("GET /n/{n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let (head, body) = answer(&mut s, &mut pending).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                assert!(
                    !head.to_ascii_lowercase().contains("connection: close"),
                    "{head}"
                );
                assert_eq!(body, format!("n={n}"));
                settle().await;
            }
            let _ = stop.send(());
            tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .expect("an idle connection does not hold the shutdown")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn pipelined_and_split_requests_are_answered_in_order_with_no_byte_lost() {
        // The connection's own wake-ups answered in its poll, or by the task.
        for inline_wakes in [true, false] {
            let (addr, _stop, _task) = server(ConnectionOptions {
                inline_wakes,
                ..options(true)
            })
            .await;
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut pending = Vec::new();
            // Three requests in one write, the third cut off mid-head: hyper
            // answers two, goes idle holding the third's start, is parked with
            // it, and the rest arrives later.
            s.write_all(b"GET /n/1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /n/3 HTTP/1.1\r\nHo")
                .await
                .unwrap();
            assert_eq!(answer(&mut s, &mut pending).await.1, "n=1");
            assert_eq!(answer(&mut s, &mut pending).await.1, "hello");
            settle().await;
            s.write_all(b"st: x\r\n\r\n").await.unwrap();
            assert_eq!(answer(&mut s, &mut pending).await.1, "n=3");
            // A body that comes after its head, later: the request is in flight
            // meanwhile, not parked.
            s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
                .await
                .unwrap();
            settle().await;
            s.write_all(b"cd").await.unwrap();
            assert_eq!(answer(&mut s, &mut pending).await.1, "abcd");
            // An empty line after a body (some clients send one) is ignored.
            s.write_all(b"\r\n").await.unwrap();
            settle().await;
            s.write_all(b"GET /n/4 HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(answer(&mut s, &mut pending).await.1, "n=4");
            // An answer bigger than the socket's buffers is written out whole
            // before the connection is parked.
            s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut reader = s;
            let mut big = Vec::new();
            let (head, body) = answer(&mut reader, &mut big).await;
            assert!(head.starts_with("HTTP/1.1 200"));
            assert_eq!(body.len(), 4 << 20);
            reader
                .write_all(b"GET /n/9 HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(answer(&mut reader, &mut big).await.1, "n=9");
        }
    }

    #[tokio::test]
    async fn a_body_answered_before_it_arrived_is_never_read_as_a_request() {
        let (addr, _stop, _task) = server(options(true)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let smuggled = b"GET /n/7 HTTP/1.1\r\nHost: x\r\n\r\n";
        s.write_all(
            format!(
                "POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                smuggled.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut pending = Vec::new();
        assert_eq!(answer(&mut s, &mut pending).await.1, "ignored");
        settle().await;
        // The body comes after the answer: hyper closes the connection (or
        // drains it); it is never answered as a request of its own.
        let _ = s.write_all(smuggled).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut rest)).await;
        rest.extend_from_slice(&pending);
        assert!(
            !String::from_utf8_lossy(&rest).contains("n=7"),
            "a body was answered as a request: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Reads until the server closes (`true`) or `within` passes.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(within, s.read_to_end(&mut rest)).await,
            Ok(Ok(_)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn an_idle_connection_and_a_slow_request_head_are_closed_after_the_time_out() {
        let (addr, _stop, _task) = server(ConnectionOptions {
            park_idle: true,
            inline_wakes: true,
            idle_timeout: Some(Duration::from_millis(300)),
        })
        .await;
        // Answered, then idle past the time-out: closed.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /n/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut pending = Vec::new();
        assert_eq!(answer(&mut s, &mut pending).await.1, "n=1");
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
        // Never a byte: closed too.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
        // A head that never ends: closed (hyper may answer 408 first).
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /n/2 HTTP/1.1\r\nHo").await.unwrap();
        assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
        // Requests within the time-outs are answered as usual.
        let mut busy = TcpStream::connect(addr).await.unwrap();
        for n in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            busy.write_all(format!("GET /n/{n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            assert_eq!(answer(&mut busy, &mut pending).await.1, format!("n={n}"));
        }
    }

    #[tokio::test]
    async fn a_close_is_honoured_and_a_shutdown_waits_for_the_request_in_flight() {
        let (addr, stop, task) = server(options(true)).await;
        // `Connection: close`: answered, then closed.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /n/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .expect("closed by the server")
            .unwrap();
        assert!(String::from_utf8_lossy(&all).ends_with("n=1"));
        // A client that goes away while parked: nothing to do.
        let gone = TcpStream::connect(addr).await.unwrap();
        drop(gone);
        // A slow request in flight when the shutdown comes is answered.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        settle().await;
        let _ = stop.send(());
        let mut pending = Vec::new();
        assert_eq!(answer(&mut slow, &mut pending).await.1, "slow");
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the server stops once the request is answered")
            .unwrap()
            .unwrap();
    }
}
