//! A request's standing against its deadline (`http::deadline`), shared
//! with the work that answers it.
//!
//! API.md promises that a 503 means nothing was written. An order reaching
//! its point of no return (its local transaction) marks its request held:
//! past the deadline a held request is waited for — its outcome comes within
//! the local transaction's own bound — rather than answered 503 while its
//! order commits behind the answer. A request the deadline cut off first
//! cannot be held any more: its order is given back, never committed.
//!
//! Every other request that writes carries a hold too, in a task-local
//! ([`scope`]): the store's writes made in the request's task hold it as
//! they start ([`hold_current`], `store::detached`), so a user, an item, a
//! promo or a payment written while its deadline passes is answered with
//! what was written. A write not started by then never starts: the
//! deadline drops the request's work, and a write asking a cut-off hold
//! is refused.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

const OPEN: u8 = 0;
const HELD: u8 = 1;
const CUT_OFF: u8 = 2;

/// One request's hold. The default one, outside any deadline (a service
/// called directly), is never cut off.
#[derive(Debug, Clone, Default)]
pub struct DeadlineHold(Arc<AtomicU8>);

impl DeadlineHold {
    /// Marks the request as past its point of no return: true when it is
    /// held (now or already), false when its deadline cut it off first.
    pub fn hold(&self) -> bool {
        match self
            .0
            .compare_exchange(OPEN, HELD, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == HELD,
        }
    }

    /// The deadline passed: true when the request is cut off (now or
    /// already), false when it is held and is to be waited for.
    pub fn cut_off(&self) -> bool {
        match self
            .0
            .compare_exchange(OPEN, CUT_OFF, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == CUT_OFF,
        }
    }
}

tokio::task_local! {
    static CURRENT: DeadlineHold;
}

/// Runs `work` with `hold` as the hold of the request it answers.
pub fn scope<F: std::future::Future>(
    hold: DeadlineHold,
    work: F,
) -> tokio::task::futures::TaskLocalFuture<DeadlineHold, F> {
    CURRENT.scope(hold, work)
}

/// Holds the request this task answers, if any (see [`scope`]): true when
/// a write may start (no request, or one held now or already), false when
/// its deadline cut it off first.
pub fn hold_current() -> bool {
    CURRENT.try_with(DeadlineHold::hold).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_first_the_deadline_waits_cut_off_first_no_hold() {
        let h = DeadlineHold::default();
        assert!(h.hold());
        assert!(h.hold(), "held stays held");
        assert!(!h.cut_off(), "a held request is not cut off");

        let c = DeadlineHold::default();
        assert!(c.cut_off());
        assert!(c.cut_off(), "cut off stays cut off");
        assert!(!c.hold(), "a cut-off request cannot be held");
    }

    #[tokio::test]
    async fn a_write_holds_the_request_of_its_task() {
        assert!(hold_current(), "outside a request a write always starts");
        let held = DeadlineHold::default();
        assert!(scope(held.clone(), async { hold_current() }).await);
        assert!(!held.cut_off(), "the write held it");
        let cut = DeadlineHold::default();
        assert!(cut.cut_off());
        assert!(!scope(cut, async { hold_current() }).await);
        let other = DeadlineHold::default();
        let spawned = scope(other.clone(), async {
            tokio::spawn(async { hold_current() }).await.unwrap()
        })
        .await;
        assert!(spawned, "a task of its own answers no request");
        assert!(other.cut_off(), "and holds none");
    }
}
