//! A connection's own wake-ups, answered inside its poll.
//!
//! hyper reads a request's body in the connection's task and hands it to
//! the handler, which runs in the same task, through a channel. Taking the
//! body out of that channel wakes the channel's sender (hyper 1.12
//! `body/chan.rs`: `Receiver::poll_next` wakes `sender_waker` whatever the
//! sender's state, and hyper has dropped the sender of a whole body by
//! then): the connection's task, woken by itself while it runs. tokio then
//! puts the task at the back of its worker's queue as a yield and unparks
//! a sibling worker to come and steal it; the sibling, on a machine whose
//! cores are busy, mostly finds nothing and parks again. Every request
//! with a body (a token, an order, a sold-out refusal) paid a trip through
//! the run queue and a sibling's wake-up and park for it
//! (docs/BENCHMARKS.md, "the sold-out answer's time goes: wake-ups").
//!
//! [`InlineWakes`] gives the connection's future a waker of its own. A wake
//! that comes while that future is being polled — from itself or from any
//! thread — is answered by polling it again at once, in the same task poll;
//! one that comes in between goes to the task's waker, as before. The
//! re-polls are bounded (and stop when the task's co-operative budget is
//! spent): past the bound the task is woken and yields, as tokio would
//! have made it.
//!
//! The cause is in hyper, and so is the better fix (wake the sender only
//! while it is open); the test `hyper_wakes_its_own_connection_for_a_body`
//! fails the day a hyper upgrade carries it, and this module can go.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Polls of the future in one task poll, at most (the first included): a
/// request with a body wakes its connection once; hyper's own yield (after
/// 16 turns of its loop) gets through after a few.
const MAX_POLLS: usize = 4;

/// Not inside a poll of the future: a wake goes to the task.
const IDLE: u8 = 0;
/// Inside a poll of the future, not woken.
const POLLING: u8 = 1;
/// Inside a poll of the future, and woken: it is polled again after.
const WOKEN: u8 = 2;

/// The waker a connection's future is polled with (module doc).
pub struct InlineWakes {
    shared: Arc<Shared>,
    waker: Waker,
}

struct Shared {
    state: AtomicU8,
    /// The task's waker, as of its last poll of the future.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            // Seen when its poll ends.
            Ok(_) => {}
            Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

impl Default for InlineWakes {
    fn default() -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        InlineWakes {
            waker: Waker::from(shared.clone()),
            shared,
        }
    }
}

impl InlineWakes {
    /// Polls `poll` (the future's poll) with this waker; again at once
    /// while it stays pending and was woken during its poll.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.shared.task.register(cx.waker());
        let mut own = Context::from_waker(&self.waker);
        for _ in 0..MAX_POLLS {
            let polling = Polling::start(&self.shared);
            let polled = poll(&mut own);
            let woken = polling.end();
            if polled.is_ready() {
                return polled;
            }
            if !woken {
                return Poll::Pending;
            }
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        // Woken still: the task's turn is over, it comes back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The future is being polled; ended (also by a panic out of the poll),
/// wakes go to the task again.
struct Polling<'a>(&'a Shared);

impl<'a> Polling<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.state.store(POLLING, Ordering::Release);
        Polling(shared)
    }

    /// Whether it was woken meanwhile.
    fn end(self) -> bool {
        let woken = self.0.state.swap(IDLE, Ordering::AcqRel) == WOKEN;
        std::mem::forget(self);
        woken
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        // Unwinding out of the poll: nothing polls it again here.
        if self.0.state.swap(IDLE, Ordering::AcqRel) == WOKEN {
            self.0.task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;

    /// Counts the task's wakes.
    #[derive(Default)]
    struct TaskWaker(AtomicUsize);

    impl Wake for TaskWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<TaskWaker>, Waker) {
        let counts = Arc::new(TaskWaker::default());
        (counts.clone(), Waker::from(counts))
    }

    #[test]
    fn a_wake_during_its_poll_is_answered_by_polling_again_not_by_the_task() {
        let wakes = InlineWakes::default();
        let (counts, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        // Wakes itself twice, then is ready.
        let got = wakes.poll(&mut cx, |cx| {
            polls += 1;
            if polls < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        });
        assert_eq!(got, Poll::Ready(3));
        assert_eq!(counts.0.load(Ordering::SeqCst), 0, "the task was not woken");
    }

    #[test]
    fn a_wake_between_polls_goes_to_the_task() {
        let wakes = InlineWakes::default();
        let (counts, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut kept = None;
        let got: Poll<()> = wakes.poll(&mut cx, |cx| {
            kept = Some(cx.waker().clone());
            Poll::Pending
        });
        assert_eq!(got, Poll::Pending);
        assert_eq!(counts.0.load(Ordering::SeqCst), 0);
        // Later, from a socket or another task (another thread alike).
        let kept = kept.unwrap();
        std::thread::spawn(move || kept.wake()).join().unwrap();
        assert_eq!(counts.0.load(Ordering::SeqCst), 1, "the task was woken");
    }

    #[test]
    fn a_future_that_keeps_waking_itself_gets_the_task_woken_and_yields() {
        let wakes = InlineWakes::default();
        let (counts, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        let got: Poll<()> = wakes.poll(&mut cx, |cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert_eq!(got, Poll::Pending);
        assert_eq!(polls, MAX_POLLS);
        assert_eq!(counts.0.load(Ordering::SeqCst), 1, "woken to come back");
    }

    #[test]
    fn a_panic_out_of_the_poll_leaves_wakes_going_to_the_task() {
        let wakes = InlineWakes::default();
        let (counts, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut kept = None;
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Poll<()> = wakes.poll(&mut cx, |cx| {
                kept = Some(cx.waker().clone());
                panic!("a handler's bug");
            });
        }));
        assert!(unwound.is_err());
        kept.unwrap().wake();
        assert_eq!(counts.0.load(Ordering::SeqCst), 1, "not swallowed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_future_woken_from_another_task_completes() {
        // A oneshot answered by another task, many times over: every wake
        // lands either inside a poll (polled again) or between (the task).
        // A lost one hangs its round: the time-out fails the test.
        let rounds = async {
            for _ in 0..2_000 {
                let (tx, mut rx) = tokio::sync::oneshot::channel::<u32>();
                let wakes = InlineWakes::default();
                tokio::spawn(async move { tx.send(7) });
                let got = std::future::poll_fn(|cx| {
                    wakes.poll(cx, |cx| std::pin::Pin::new(&mut rx).poll(cx))
                })
                .await;
                assert_eq!(got.unwrap(), 7);
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), rounds)
            .await
            .expect("no wake lost");
    }

    /// One POST with a small body, head and body in one write (as nginx
    /// sends it), served by hyper's HTTP/1 connection polled once by hand:
    /// the task's wakes meanwhile, and the answer.
    fn serve_one_post(inline: bool) -> (usize, String) {
        use http_body_util::BodyExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let body = r#"{"promo_id": 1, "token": "x"}"#;
        let request = format!(
            "POST /api/v1/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        rt.block_on(client.write_all(request.as_bytes())).unwrap();
        let service =
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async {
                let got = req.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(got)))
            });
        let mut conn = Box::pin(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), service),
        );
        let wakes = InlineWakes::default();
        let (counts, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let polled = if inline {
            wakes.poll(&mut cx, |cx| conn.as_mut().poll(cx))
        } else {
            conn.as_mut().poll(&mut cx)
        };
        assert!(
            polled.is_pending(),
            "keep-alive: waits for the next request"
        );
        let mut answer = vec![0; 4096];
        let n = rt.block_on(client.read(&mut answer)).unwrap();
        (
            counts.0.load(Ordering::SeqCst),
            String::from_utf8_lossy(&answer[..n]).into_owned(),
        )
    }

    #[test]
    fn hyper_wakes_its_own_connection_for_a_body() {
        // The premise: fails once hyper no longer does (module doc).
        let (task_wakes, answer) = serve_one_post(false);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            task_wakes >= 1,
            "hyper no longer wakes its own connection: InlineWakes can go"
        );
    }

    #[test]
    fn served_with_inline_wakes_a_post_wakes_no_task() {
        let (task_wakes, answer) = serve_one_post(true);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(r#""token": "x"}"#), "{answer}");
        assert_eq!(task_wakes, 0);
    }
}
