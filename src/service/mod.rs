//! The use cases, written once against the ports: accounts and sessions,
//! the catalog and promos, and the order path. Nothing here names a
//! concrete adapter; `app.rs` hands the ports in.

use std::sync::Arc;

use crate::cache::{CacheError, KvStore, RateLimiter, StockLedger};
use crate::config::Config;
use crate::domain::{IdGenerator, Invalid};
use crate::mq::{MessageBus, MqError};
use crate::store::{Store, StoreError};

pub mod buyer_pace;
pub mod catalog;
pub mod checkback;
pub mod deadline_hold;
pub mod item_cache;
pub mod monitor;
pub mod node_lease;
pub mod orders;
pub mod otp;
pub mod payment;
pub mod recovery;
pub mod sold_out;
pub mod tokens;
pub mod users;
pub mod write_behind;

/// Every outcome a use case can refuse with. The HTTP edge maps each to a
/// status and a stable code; causes of `Unavailable`/`Internal` are kept for
/// the log and never sent to clients.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("seckill token missing, wrong, expired or already used")]
    InvalidToken,
    #[error("captcha answer wrong or expired")]
    WrongCaptcha,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("the promo has not started")]
    PromoNotStarted,
    #[error("the promo has ended")]
    PromoEnded,
    #[error("the promo is not published")]
    PromoNotPublished,
    #[error("sold out")]
    SoldOut,
    #[error("you already bought the most this promo allows")]
    AlreadyBought,
    #[error("{0}")]
    Conflict(String),
    /// Busy for a moment (a queue, a shared per-second limit): retry in a
    /// second.
    #[error("{0}")]
    RateLimited(&'static str),
    /// A limit over a longer period refused (codes per phone an hour,
    /// logins a minute): `retry_after` is when it allows one more.
    #[error("{message}")]
    LimitReached {
        message: &'static str,
        retry_after: std::time::Duration,
    },
    #[error("{context}")]
    Unavailable {
        context: &'static str,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ServiceError {
    /// This instance's node id may be another's now (its lease not
    /// confirmed, or a configured id another process holds, see
    /// [`node_lease`]): no order id is made.
    pub fn node_unowned() -> Self {
        ServiceError::unavailable(
            "this instance does not own its node id now (another process holds it, or the shared store cannot confirm it); retry shortly",
        )
    }

    /// 429 from a limit `rule` refused: one more event is allowed once
    /// the rule's period over its limit has passed (the limiters are GCRA).
    pub fn limit_reached(rule: &crate::cache::RateRule, message: &'static str) -> Self {
        ServiceError::LimitReached {
            message,
            retry_after: rule.period / rule.limit.max(1),
        }
    }

    pub fn unavailable(context: &'static str) -> Self {
        ServiceError::Unavailable {
            context,
            source: None,
        }
    }

    /// Every [`ServiceError::reason`], by [`ServiceError::reason_index`]:
    /// meters are registered up front, one per reason.
    pub const REASONS: [&'static str; 15] = [
        "invalid",
        "unauthenticated",
        "forbidden",
        "invalid_token",
        "wrong_captcha",
        "not_found",
        "promo_not_started",
        "promo_ended",
        "promo_not_published",
        "sold_out",
        "already_bought",
        "conflict",
        "rate_limited",
        "unavailable",
        "internal",
    ];

    /// A stable label for metrics (`orders_refused_total{reason}`).
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.reason_index()]
    }

    /// The reason's place in [`ServiceError::REASONS`].
    pub fn reason_index(&self) -> usize {
        match self {
            ServiceError::Invalid(_) => 0,
            ServiceError::Unauthenticated(_) => 1,
            ServiceError::Forbidden(_) => 2,
            ServiceError::InvalidToken => 3,
            ServiceError::WrongCaptcha => 4,
            ServiceError::NotFound(_) => 5,
            ServiceError::PromoNotStarted => 6,
            ServiceError::PromoEnded => 7,
            ServiceError::PromoNotPublished => 8,
            ServiceError::SoldOut => 9,
            ServiceError::AlreadyBought => 10,
            ServiceError::Conflict(_) => 11,
            ServiceError::RateLimited(_) | ServiceError::LimitReached { .. } => 12,
            ServiceError::Unavailable { .. } => 13,
            ServiceError::Internal(_) => 14,
        }
    }
}

impl From<Invalid> for ServiceError {
    fn from(e: Invalid) -> Self {
        ServiceError::Invalid(e.0)
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ServiceError::NotFound("not found"),
            StoreError::Conflict(c) => ServiceError::Conflict(format!("duplicate ({c})")),
            StoreError::Corrupt(_) => ServiceError::Internal(Box::new(e)),
            StoreError::TooLate => {
                ServiceError::unavailable("the database did not commit the order in time; retry")
            }
            StoreError::CutOff => {
                ServiceError::unavailable("no answer within the request deadline; retry")
            }
            StoreError::CommitUnanswered(_) => ServiceError::Unavailable {
                context: "the order's outcome is not known yet; check your orders shortly",
                source: Some(Box::new(e)),
            },
            StoreError::Db(_) | StoreError::Migrate(_) => ServiceError::Unavailable {
                context: "the database is unavailable",
                source: Some(Box::new(e)),
            },
        }
    }
}

impl From<CacheError> for ServiceError {
    fn from(e: CacheError) -> Self {
        ServiceError::Unavailable {
            context: "the cache is unavailable",
            source: Some(Box::new(e)),
        }
    }
}

impl From<MqError> for ServiceError {
    fn from(e: MqError) -> Self {
        ServiceError::Unavailable {
            context: "the message bus is unavailable",
            source: Some(Box::new(e)),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// One error shared by several callers (a failed batch, a failed cache
/// load), as each one's cause.
#[derive(Debug)]
pub(crate) struct SharedError<E>(pub Arc<E>);

impl<E: std::fmt::Display> std::fmt::Display for SharedError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error> std::error::Error for SharedError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The ports every use case draws on, one `Arc<dyn Port>` each.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn Store>,
    pub ledger: Arc<dyn StockLedger>,
    pub kv: Arc<dyn KvStore>,
    pub limiter: Arc<dyn RateLimiter>,
    pub bus: Arc<dyn MessageBus>,
    pub otp: Arc<dyn otp::OtpSender>,
}

/// What every service shares: config, ports, the id generator and the
/// process-local sold-out flags.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub ports: Ports,
    pub ids: Arc<IdGenerator>,
    pub sold_out: Arc<sold_out::SoldOutFlags>,
    /// Each buyer's pace on this instance (see [`buyer_pace`]).
    pub buyer_pace: Arc<buyer_pace::BuyerPace>,
    /// Ledger rebuilds this process runs (see [`recovery`]).
    pub recovery: Arc<recovery::LedgerRecovery>,
    /// Work no request waits for any more — the store calls of requests cut
    /// off (their deadline, the client gone), the seckill tokens such
    /// requests give back — each a task of this tracker: a shutdown lets
    /// them finish (bounded) rather than dropping them mid-way.
    pub background: tokio_util::task::TaskTracker,
}

impl Context {
    /// A value no other lease holder uses (this node, a fresh id): a lease
    /// is given back with [`KvStore::delete_if_equals`] on it, so a holder
    /// that outlived its lease never deletes the next holder's.
    ///
    /// [`KvStore::delete_if_equals`]: crate::cache::KvStore::delete_if_equals
    pub fn lease_holder(&self) -> String {
        format!("{}:{}", self.ids.node(), self.ids.next_id())
    }

    /// Whether this process answers "sold out" at once, from its own flag:
    /// set within `local_sold_out_ttl_ms`, yes, no round trip. A lapsed flag
    /// (write-behind, where the shared ledger knows) is looked at again by
    /// one request per `sold_out_poll_ms` — set again or cleared on its
    /// answer — while the others keep answering from it (before, every
    /// request in the look's round trip went on to the rate limit and the
    /// token store). Pure-database strategies have no shared flag: a lapsed
    /// flag there is no flag, the next order asks the DB.
    pub async fn sold_out_here(&self, promo: crate::domain::PromoId) -> ServiceResult<bool> {
        use sold_out::FlagState;
        match self.sold_out.state(promo) {
            FlagState::Fresh => Ok(true),
            FlagState::Lapsed(seen)
                if self.config.order_strategy == crate::config::OrderStrategy::WriteBehind =>
            {
                if !self.sold_out.due_for_check(promo) {
                    return Ok(true);
                }
                let sold_out = self.ports.ledger.sold_out(promo).await?;
                // Only the flag seen lapsed is renewed or cleared: a
                // give-back or a reservation meanwhile has the last word.
                self.sold_out.settle_lapsed(promo, seen, sold_out);
                Ok(sold_out)
            }
            FlagState::Lapsed(_) | FlagState::Unset => Ok(false),
        }
    }

    /// Whether another instance sold the promo out: the shared ledger's
    /// flag, asked at most once per `sold_out_poll_ms` per promo (false
    /// in between); when it says so, this process's flag is set too.
    pub async fn sold_out_elsewhere(&self, promo: crate::domain::PromoId) -> ServiceResult<bool> {
        if self.sold_out.due_for_check(promo) && self.ports.ledger.sold_out(promo).await? {
            self.sold_out.set(promo);
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod reason_tests {
    use super::ServiceError as E;

    #[test]
    fn every_reason_is_listed_once() {
        let all = [
            E::Invalid(String::new()),
            E::Unauthenticated(""),
            E::Forbidden(""),
            E::InvalidToken,
            E::WrongCaptcha,
            E::NotFound(""),
            E::PromoNotStarted,
            E::PromoEnded,
            E::PromoNotPublished,
            E::SoldOut,
            E::AlreadyBought,
            E::Conflict(String::new()),
            E::RateLimited(""),
            E::unavailable(""),
            E::Internal("x".into()),
        ];
        let reasons: Vec<_> = all.iter().map(E::reason).collect();
        assert_eq!(reasons, E::REASONS, "REASONS follows reason(), in order");
        let limit = E::LimitReached {
            message: "",
            retry_after: std::time::Duration::from_secs(720),
        };
        assert_eq!(limit.reason(), "rate_limited");
    }
}
