//! Process-local sold-out flags: once the ledger says a promo is sold out,
//! this instance answers the crowd itself for a short while (no round trip),
//! then asks the ledger again, so stock given back elsewhere is seen within
//! the TTL and a poll interval (a give-back on this instance clears the flag
//! at once). Until that look comes back the lapsed flag keeps answering: a
//! sold-out crowd never falls through to the rate limit and the token store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::domain::PromoId;

/// What this process knows of a promo's sold-out flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagState {
    Fresh,
    /// Set at this instant, longer ago than the TTL.
    Lapsed(Instant),
    Unset,
}

pub struct SoldOutFlags {
    ttl: Duration,
    flags: RwLock<HashMap<PromoId, Instant>>,
    /// How often the shared flag is asked while this one is not set.
    poll: Duration,
    checked: RwLock<HashMap<PromoId, Instant>>,
}

impl SoldOutFlags {
    pub fn new(ttl: Duration) -> Self {
        Self::with_poll(ttl, Duration::ZERO)
    }

    /// `poll`: at most one look at the shared flag per promo per `poll`
    /// (zero: every time).
    pub fn with_poll(ttl: Duration, poll: Duration) -> Self {
        SoldOutFlags {
            ttl,
            flags: RwLock::new(HashMap::new()),
            poll,
            checked: RwLock::new(HashMap::new()),
        }
    }

    /// Whether the shared sold-out flag should be asked now: true at most
    /// once per poll interval per promo (the caller then asks).
    pub fn due_for_check(&self, promo: PromoId) -> bool {
        if self.poll.is_zero() {
            return true;
        }
        if self
            .checked
            .read()
            .get(&promo)
            .is_some_and(|at| at.elapsed() < self.poll)
        {
            return false;
        }
        let mut checked = self.checked.write();
        match checked.get(&promo) {
            Some(at) if at.elapsed() < self.poll => false,
            _ => {
                checked.insert(promo, Instant::now());
                true
            }
        }
    }

    /// The promo's flag here: set within the TTL, set longer ago (kept until
    /// a fresh look says otherwise or a give-back clears it), or not set.
    pub fn state(&self, promo: PromoId) -> FlagState {
        match self.flags.read().get(&promo) {
            Some(at) if at.elapsed() < self.ttl => FlagState::Fresh,
            Some(at) => FlagState::Lapsed(*at),
            None => FlagState::Unset,
        }
    }

    /// Whether this instance believes the promo sold out (flag younger than
    /// the TTL).
    pub fn is_set(&self, promo: PromoId) -> bool {
        self.flags
            .read()
            .get(&promo)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// The shared flag's answer for a flag seen lapsed (set at `seen`):
    /// renewed when still sold out, cleared otherwise — unless the flag
    /// changed meanwhile (set again by a reservation, cleared by a
    /// give-back), which then stands.
    pub fn settle_lapsed(&self, promo: PromoId, seen: Instant, sold_out: bool) {
        let mut flags = self.flags.write();
        if flags.get(&promo) == Some(&seen) {
            if sold_out {
                flags.insert(promo, Instant::now());
            } else {
                flags.remove(&promo);
            }
        }
    }

    pub fn set(&self, promo: PromoId) {
        self.flags.write().insert(promo, Instant::now());
    }

    pub fn clear(&self, promo: PromoId) {
        if self.flags.read().contains_key(&promo) {
            self.flags.write().remove(&promo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_expires_after_its_ttl_and_can_be_cleared() {
        let f = SoldOutFlags::new(Duration::from_millis(30));
        assert!(!f.is_set(PromoId(1)));
        f.set(PromoId(1));
        assert!(f.is_set(PromoId(1)));
        assert!(!f.is_set(PromoId(2)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!f.is_set(PromoId(1)));
        f.set(PromoId(1));
        f.clear(PromoId(1));
        assert!(!f.is_set(PromoId(1)));
    }

    #[test]
    fn a_lapsed_flag_stays_until_it_is_cleared_or_set_again() {
        let f = SoldOutFlags::new(Duration::from_millis(30));
        assert_eq!(f.state(PromoId(1)), FlagState::Unset);
        f.set(PromoId(1));
        assert_eq!(f.state(PromoId(1)), FlagState::Fresh);
        std::thread::sleep(Duration::from_millis(40));
        let FlagState::Lapsed(seen) = f.state(PromoId(1)) else {
            panic!("not lapsed")
        };
        f.settle_lapsed(PromoId(1), seen, true);
        assert_eq!(f.state(PromoId(1)), FlagState::Fresh, "renewed");
        std::thread::sleep(Duration::from_millis(40));
        let FlagState::Lapsed(seen) = f.state(PromoId(1)) else {
            panic!("not lapsed")
        };
        f.settle_lapsed(PromoId(1), seen, false);
        assert_eq!(f.state(PromoId(1)), FlagState::Unset, "cleared");
        // A flag changed since it was seen lapsed keeps the change.
        f.set(PromoId(1));
        f.clear(PromoId(1));
        f.settle_lapsed(PromoId(1), seen, true);
        assert_eq!(f.state(PromoId(1)), FlagState::Unset, "a give-back stands");
        f.set(PromoId(1));
        f.settle_lapsed(PromoId(1), seen, false);
        assert_eq!(f.state(PromoId(1)), FlagState::Fresh, "a new flag stands");
    }

    #[test]
    fn the_shared_flag_is_asked_at_most_once_per_poll_interval() {
        let f = SoldOutFlags::with_poll(Duration::from_millis(30), Duration::from_millis(30));
        assert!(f.due_for_check(PromoId(1)));
        assert!(!f.due_for_check(PromoId(1)));
        assert!(f.due_for_check(PromoId(2)), "per promo");
        std::thread::sleep(Duration::from_millis(40));
        assert!(f.due_for_check(PromoId(1)));
        let every = SoldOutFlags::new(Duration::from_millis(30));
        assert!(every.due_for_check(PromoId(1)) && every.due_for_check(PromoId(1)));
    }
}
