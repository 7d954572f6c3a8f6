//! Background work every instance runs: the stock-deduction consumer, the
//! cache-invalidation consumer and the reconciler.

pub mod cache_invalidation;
pub mod reconciler;
pub mod stock_consumer;
