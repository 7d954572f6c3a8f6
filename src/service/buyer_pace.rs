//! Each buyer's own pace on this instance: token and order requests of one
//! account beyond `buyer_rate_per_sec` are answered 429 here, before they
//! spend a share of the shared limits (`order_rate_per_sec`,
//! `token_rate_per_sec`) that every buyer of the sale draws on — one script
//! with one account cannot starve the crowd. In process, no round trip: a
//! buyer's requests spread over the instances, so this is each instance's
//! bound (a client's back-off keeps well under it).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota};

use super::{ServiceError, ServiceResult};
use crate::domain::UserId;

/// Buyers whose pace this instance keeps; past it, the idle ones are
/// forgotten (looked at once every `PRUNE_EVERY` requests: forgetting
/// walks them all).
const REMEMBERED: usize = 100_000;
const PRUNE_EVERY: u64 = 4096;

pub struct BuyerPace {
    limiter: DefaultKeyedRateLimiter<UserId>,
    checks: AtomicU64,
}

impl BuyerPace {
    /// `per_sec` requests a second per buyer, and as many at once.
    pub fn new(per_sec: u32) -> Self {
        let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        BuyerPace {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_sec)),
            checks: AtomicU64::new(0),
        }
    }

    /// `Ok` when `user` is within their pace (and counts this request).
    pub fn check(&self, user: UserId) -> ServiceResult<()> {
        let allowed = self.limiter.check_key(&user).is_ok();
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
            && self.limiter.len() > REMEMBERED
        {
            self.limiter.retain_recent();
        }
        if allowed {
            Ok(())
        } else {
            metrics::counter!("seckill_buyer_pace_refused_total").increment(1);
            Err(ServiceError::RateLimited(
                "too many requests from your account; retry shortly",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buyer_past_their_pace_is_refused_and_others_are_not() {
        let pace = BuyerPace::new(3);
        for _ in 0..3 {
            assert!(pace.check(UserId(1)).is_ok());
        }
        assert!(matches!(
            pace.check(UserId(1)),
            Err(ServiceError::RateLimited(_))
        ));
        assert!(pace.check(UserId(2)).is_ok());
    }
}
