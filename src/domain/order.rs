//! Orders and their journal (`stock_log`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ItemId, OrderNo, PromoId, StockLogId, UserId};

/// An order's life: created unpaid, then paid or cancelled (by its owner or
/// by the payment time-out). Paid and cancelled are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending_payment" => Some(OrderStatus::PendingPayment),
            "paid" => Some(OrderStatus::Paid),
            "cancelled" => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }
}

/// The journal state of one reservation: `init` until the local transaction
/// commits (`committed`) or the reservation is given back (`rolled_back`).
/// The transactional message's check-back answers from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockLogStatus {
    Init,
    Committed,
    RolledBack,
}

impl StockLogStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StockLogStatus::Init => "init",
            StockLogStatus::Committed => "committed",
            StockLogStatus::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "init" => Some(StockLogStatus::Init),
            "committed" => Some(StockLogStatus::Committed),
            "rolled_back" => Some(StockLogStatus::RolledBack),
            _ => None,
        }
    }
}

/// A stored order.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub order_no: OrderNo,
    pub stock_log_id: StockLogId,
    pub user_id: UserId,
    pub item_id: ItemId,
    pub promo_id: PromoId,
    pub amount: i64,
    pub unit_price_cents: i64,
    pub total_cents: i64,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
}

/// An order on its way: journaled (`init`), then reserved, then committed.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderDraft {
    pub stock_log_id: StockLogId,
    pub order_no: OrderNo,
    pub user_id: UserId,
    pub item_id: ItemId,
    pub promo_id: PromoId,
    pub amount: i64,
    pub unit_price_cents: i64,
    pub created_at: DateTime<Utc>,
}

impl OrderDraft {
    pub fn total_cents(&self) -> i64 {
        self.amount * self.unit_price_cents
    }

    /// The order this draft becomes once committed.
    pub fn to_order(&self) -> Order {
        Order {
            order_no: self.order_no.clone(),
            stock_log_id: self.stock_log_id,
            user_id: self.user_id,
            item_id: self.item_id,
            promo_id: self.promo_id,
            amount: self.amount,
            unit_price_cents: self.unit_price_cents,
            total_cents: self.total_cents(),
            status: OrderStatus::PendingPayment,
            created_at: self.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in [
            OrderStatus::PendingPayment,
            OrderStatus::Paid,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        for s in [
            StockLogStatus::Init,
            StockLogStatus::Committed,
            StockLogStatus::RolledBack,
        ] {
            assert_eq!(StockLogStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("shipped"), None);
    }
}
