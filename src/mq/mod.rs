//! The message-bus port: RocketMQ-style transactional messages for the order
//! path, plain publish for broadcasts (cache invalidation), and consumers.
//!
//! A transactional send is: half message (stored, invisible) → the caller's
//! local transaction → commit (delivered) or rollback (dropped). When the
//! outcome is unknown, the bus later asks the [`TxChecker`] (the check-back)
//! until it answers or the bus gives up. Adapters: `memory` (in-process, the
//! embedded default, with the same semantics) and RocketMQ.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::domain::{ItemId, OrderNo, PromoId};
use crate::store::Deduction;

pub mod memory;
pub mod rocketmq;

/// Every message on the bus. Tagged and versioned so that old consumers can
/// refuse what they do not understand; consumers are idempotent by a key the
/// message carries (the `stock_log` ids of a deduction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Deduct DB stock for committed orders (one message per group commit).
    StockDeduct {
        v: u8,
        promo_id: PromoId,
        entries: Vec<Deduction>,
    },
    /// An item (or its promo) changed: drop cached copies.
    ItemChanged { v: u8, item_id: ItemId },
    /// Orders whose payment time is up (a delayed message sent when they
    /// were committed): cancel those still unpaid.
    PaymentDue { v: u8, order_nos: Vec<OrderNo> },
    /// A session ended (log-out): drop every instance's cached copy. Names
    /// the session by its token's SHA-256, never by the token.
    SessionEnded { v: u8, digest: String },
    /// Deleting an item's shared cache entry failed: delete it again (one
    /// consumer of the group; a failure is redelivered until it succeeds),
    /// then tell every instance.
    SharedItemStale { v: u8, item_id: ItemId },
}

impl Event {
    pub fn topic(&self) -> Topic {
        match self {
            Event::StockDeduct { .. } => Topic::Stock,
            Event::ItemChanged { .. } | Event::SessionEnded { .. } => Topic::Cache,
            Event::PaymentDue { .. } => Topic::PaymentDue,
            Event::SharedItemStale { .. } => Topic::CacheRepair,
        }
    }

    /// A key for logs and broker indexes.
    pub fn key(&self) -> String {
        match self {
            Event::StockDeduct { entries, .. } => entries
                .first()
                .map(|e| e.stock_log_id.to_string())
                .unwrap_or_default(),
            Event::ItemChanged { item_id, .. } | Event::SharedItemStale { item_id, .. } => {
                item_id.to_string()
            }
            Event::SessionEnded { .. } => "session".to_owned(),
            Event::PaymentDue { order_nos, .. } => order_nos
                .first()
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// The bus's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Stock,
    Cache,
    /// Payment time-outs (delayed messages).
    PaymentDue,
    /// Shared cache deletes to redo (clustering, redelivered on failure).
    CacheRepair,
    /// Readiness pings; never consumed.
    Health,
}

impl Topic {
    pub fn name(self) -> &'static str {
        match self {
            Topic::Stock => "stock",
            Topic::Cache => "cache",
            Topic::PaymentDue => "payment_due",
            Topic::CacheRepair => "cache_repair",
            Topic::Health => "health",
        }
    }
}

/// A local transaction's answer, as sent to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    Commit,
    Rollback,
    Unknown,
}

impl TxState {
    pub fn as_str(self) -> &'static str {
        match self {
            TxState::Commit => "commit",
            TxState::Rollback => "rollback",
            TxState::Unknown => "unknown",
        }
    }
}

/// The local transaction of a transactional send, run once after the half
/// message is stored.
pub type LocalTx = Box<dyn FnOnce() -> BoxFuture<'static, TxState> + Send>;

/// Answers the broker's check-back about a half message whose local
/// transaction's outcome it never learnt.
#[async_trait]
pub trait TxChecker: Send + Sync {
    async fn check(&self, event: &Event) -> TxState;
}

/// A consumer. An `Err` asks for redelivery later.
#[async_trait]
pub trait MessageHandler: Send + Sync {
    async fn handle(&self, event: &Event) -> anyhow::Result<()>;
}

/// How a consumer group shares a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Each message goes to one consumer of the group.
    Clustering,
    /// Each message goes to every consumer (every instance).
    Broadcast,
}

/// A bus failure: the broker could not be reached or refused the message.
#[derive(Debug, thiserror::Error)]
#[error("message bus unavailable: {0}")]
pub struct MqError(pub String);

/// The bus port.
#[async_trait]
pub trait MessageBus: Send + Sync {
    /// Sends `event` as a half message, runs `local`, then commits or rolls
    /// back per its answer; an `Unknown` answer is left to the check-back.
    /// `Ok(state)` is what the local transaction answered; `Err` means the
    /// half message was not stored (the local transaction may not have run;
    /// callers settle through `stock_log`, never by assuming).
    async fn send_in_transaction(&self, event: Event, local: LocalTx) -> Result<TxState, MqError>;
    /// Publishes a plain message (visible at once).
    async fn publish(&self, event: Event) -> Result<(), MqError>;
    /// Publishes a message delivered `delay` from now (RocketMQ's delayed
    /// messages; a timer in process). Not kept across a restart of the
    /// in-process bus: callers keep a sweep behind it.
    async fn publish_delayed(
        &self,
        event: Event,
        delay: std::time::Duration,
    ) -> Result<(), MqError>;
    /// Registers a consumer for a topic under a group.
    async fn subscribe(
        &self,
        topic: Topic,
        group: &str,
        delivery: Delivery,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<(), MqError>;
    async fn ping(&self) -> Result<(), MqError>;
    /// Leaves the bus, at the end of a graceful shutdown: this process's
    /// consumers stop and unregister, so the group's other members take
    /// their share at their next rebalance (not after the broker's
    /// heartbeat time-out), and its producers unregister (check-backs go
    /// to another instance). Sends fail afterwards. Call it once nothing
    /// sends any more; a bounded caller may cut it off.
    async fn shutdown(&self);
}
