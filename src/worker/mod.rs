//! Background work every instance runs: the stock-deduction consumer, the
//! cache-invalidation consumer, the payment time-out consumer and the
//! reconciler (settlement, ledger rebuilds, drift repair, unpaid sweep).

pub mod cache_invalidation;
pub mod payment_due;
pub mod reconciler;
pub mod stock_consumer;
