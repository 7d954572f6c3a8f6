//! The flash-sale rules, free of any I/O: ids, users, items, promos, orders
//! and the checks that decide whether a request may proceed.

pub mod ids;
pub mod item;
pub mod order;
pub mod promo;
pub mod user;

pub use ids::{IdGenerator, ItemId, OrderNo, PromoId, StockLogId, UserId};
pub use item::{Item, ItemPatch, NewItem};
pub use order::{Order, OrderDraft, OrderStatus, StockLogStatus};
pub use promo::{NewPromo, OrderStrategy, Promo, PromoBaseline, PromoState, SaleJournal};
pub use user::{NewUser, Phone, User};

use chrono::{DateTime, SubsecRound, Utc};

/// A time as the stores keep it, to the microsecond (MySQL's
/// `DATETIME(6)`): an answer built before the write reads the same as the
/// row read back afterwards.
pub fn stored_time(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// A rule broken by well-formed input: answered as `422 INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(msg: impl Into<String>) -> Self {
        Invalid(msg.into())
    }
}

/// Checks that a text field is present and at most `max` characters long.
pub fn bounded_text(field: &str, value: &str, min: usize, max: usize) -> Result<(), Invalid> {
    let n = value.chars().count();
    if n < min {
        return Err(Invalid(format!(
            "{field} must have at least {min} characters"
        )));
    }
    if n > max {
        return Err(Invalid(format!(
            "{field} must have at most {max} characters"
        )));
    }
    Ok(())
}
