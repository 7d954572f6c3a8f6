//! The RocketMQ bus (`rocketmq-client-rust`, remoting protocol: the same code
//! talks to the Rust broker here and to an Apache RocketMQ cluster).
//!
//! - Transactional sends use a `TransactionMQProducer`. Its listener is
//!   synchronous and runs on the client's blocking pool, so it drives our
//!   async local transaction and check-back on the app runtime with
//!   `Handle::block_on` under a deadline below the client's 30 s task limit.
//!   The closure of the local transaction travels as the send's `arg`.
//! - Consumers are push consumers: clustering for stock deduction (failures
//!   are redelivered by the broker), broadcasting for cache invalidation
//!   (each instance gets each message; a fixed instance name per consumer
//!   and its offsets folder are created, as the client needs).
//! - The client runtime is built explicitly, large enough that a burst of
//!   local transactions is never skipped (ROCKETMQ.md, pitfall 1).

use std::any::Any;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rocketmq_client_rust::{
    ClientConfig, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext,
    ConsumeConcurrentlyStatus, DefaultMQProducer, DefaultMQPushConsumer, LocalTransactionState,
    MQPushConsumer, MessageListenerConcurrently, SendStatus, TelemetryHandle, TransactionListener,
    TransactionMQProducer,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_model::common::message::MessageTrait;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};

use super::*;

/// Settings of the RocketMQ bus.
#[derive(Debug, Clone)]
pub struct RocketMqSettings {
    /// `host:port[;host:port]`.
    pub namesrv: String,
    /// Prefix of topics and groups (several deployments can share a broker).
    pub prefix: String,
    /// Distinguishes this process's broadcast consumers.
    pub instance: String,
    /// The local transaction's and check-back's deadline.
    pub listener_deadline: Duration,
    /// How long a send waits for the broker to store the message.
    pub send_timeout_ms: u64,
    /// How long start-up waits for the name server to route the topics.
    pub start_timeout: Duration,
}

/// The local transaction handed to the listener through the send's `arg`.
struct LocalSlot(Mutex<Option<LocalTx>>);

struct Listener {
    app: tokio::runtime::Handle,
    checker: Arc<dyn TxChecker>,
    deadline: Duration,
}

fn to_rocketmq(state: TxState) -> LocalTransactionState {
    match state {
        TxState::Commit => LocalTransactionState::CommitMessage,
        TxState::Rollback => LocalTransactionState::RollbackMessage,
        TxState::Unknown => LocalTransactionState::Unknown,
    }
}

fn from_rocketmq(state: LocalTransactionState) -> TxState {
    match state {
        LocalTransactionState::CommitMessage => TxState::Commit,
        LocalTransactionState::RollbackMessage => TxState::Rollback,
        LocalTransactionState::Unknown => TxState::Unknown,
    }
}

fn decode(body: Option<&[u8]>) -> Option<Event> {
    serde_json::from_slice(body?).ok()
}

impl TransactionListener for Listener {
    fn execute_local_transaction(
        &self,
        _msg: &dyn MessageTrait,
        arg: Option<&(dyn Any + Send + Sync)>,
    ) -> LocalTransactionState {
        let Some(local) = arg
            .and_then(|a| a.downcast_ref::<LocalSlot>())
            .and_then(|s| s.0.lock().take())
        else {
            tracing::error!("transactional send without its local transaction; rolling back");
            return LocalTransactionState::RollbackMessage;
        };
        let deadline = self.deadline;
        let state = self
            .app
            .block_on(async move { tokio::time::timeout(deadline, local()).await });
        to_rocketmq(state.unwrap_or(TxState::Unknown))
    }

    fn check_local_transaction(&self, msg: &MessageExt) -> LocalTransactionState {
        let Some(event) = decode(msg.body().as_deref()) else {
            // Another version's event (a rolling upgrade): not ours to
            // decide. Unknown lets a producer that reads it answer, and the
            // reconciler settles the journal either way.
            tracing::error!(msg_id = %msg.msg_id(), "check-back for a message we cannot read; answered unknown");
            return LocalTransactionState::Unknown;
        };
        let checker = self.checker.clone();
        let deadline = self.deadline;
        let state = self
            .app
            .block_on(async move { tokio::time::timeout(deadline, checker.check(&event)).await })
            .unwrap_or(TxState::Unknown);
        metrics::counter!("seckill_checkbacks_total", "outcome" => state.as_str()).increment(1);
        to_rocketmq(state)
    }
}

struct Consumer {
    app: tokio::runtime::Handle,
    handler: Arc<dyn MessageHandler>,
    deadline: Duration,
    group: String,
}

impl MessageListenerConcurrently for Consumer {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeConcurrentlyStatus> {
        for msg in msgs {
            let Some(event) = decode(msg.body().as_deref()) else {
                tracing::error!(group = %self.group, msg_id = %msg.msg_id(), "unreadable message skipped");
                continue;
            };
            let handler = self.handler.clone();
            let deadline = self.deadline;
            let outcome = self.app.block_on(async move {
                tokio::time::timeout(deadline, handler.handle(&event)).await
            });
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(group = %self.group, error = %format!("{e:#}"), "consumer failed; the broker redelivers");
                    return Ok(ConsumeConcurrentlyStatus::ReconsumeLater);
                }
                Err(_) => {
                    tracing::warn!(group = %self.group, "consumer timed out; the broker redelivers");
                    return Ok(ConsumeConcurrentlyStatus::ReconsumeLater);
                }
            }
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// The RocketMQ adapter of [`MessageBus`].
pub struct RocketMqBus {
    settings: RocketMqSettings,
    app: tokio::runtime::Handle,
    client: Arc<ClientRuntime>,
    /// Read-locked by each transactional send (its local transaction
    /// included), write-locked by the shutdown: the producer leaves the
    /// group only once no local transaction of ours runs.
    tx_producer: tokio::sync::RwLock<TransactionMQProducer>,
    producer: DefaultMQProducer,
    consumers: tokio::sync::Mutex<Vec<DefaultMQPushConsumer>>,
    /// Owns the client's runtime; dropped last.
    _owner: RuntimeOwner,
}

fn mq_err(context: &str, e: impl std::fmt::Debug) -> MqError {
    MqError(format!("{context}: {e:?}"))
}

impl RocketMqBus {
    /// Builds the client runtime, starts both producers and creates the
    /// topics. Call inside the app's multi-thread runtime.
    pub async fn start(
        settings: RocketMqSettings,
        checker: Arc<dyn TxChecker>,
    ) -> Result<Self, MqError> {
        let app = tokio::runtime::Handle::current();
        let mut cfg = RuntimeConfig::default()
            .with_max_blocking_threads(128)
            .map_err(|e| mq_err("runtime", e))?;
        cfg.thread_name = "rocketmq-client".to_string();
        // Every listener call runs on this lane: room for a burst of local
        // transactions plus every consumer thread, so none is skipped.
        cfg.blocking_lane_policies.metadata_io.max_concurrency = 96;
        cfg.blocking_lane_policies.metadata_io.max_queue_depth = 4096;
        let owner = RuntimeOwner::plan(cfg)
            .map_err(|e| mq_err("runtime plan", e))?
            .build()
            .map_err(|e| mq_err("runtime build", e))?;
        let client = ClientRuntime::try_new(
            owner.root_context().component("client"),
            ClientRuntimeConfig::default(),
            TelemetryHandle::noop(),
        )
        .map_err(|e| mq_err("client runtime", e))?;
        let listener = Listener {
            app: app.clone(),
            checker,
            deadline: settings.listener_deadline,
        };
        // The plain producer first: it creates the topics, and start-up
        // waits (bounded) until the name server routes them. A broker that
        // has just opened its port may not have registered yet: the
        // topics' creation then fails, and an instance that went on would
        // answer its first orders 503 (no route for the half message).
        let mut producer = DefaultMQProducer::builder(client.clone())
            .producer_group(format!("{}producer", settings.prefix))
            .name_server_addr(settings.namesrv.clone())
            .send_msg_timeout(settings.send_timeout_ms as _)
            .build();
        producer
            .start()
            .await
            .map_err(|e| mq_err("producer start", e))?;
        route_topics(&mut producer, &settings).await;
        // Then the transactional producer, told its topic: its start loads
        // the route (and meets the broker, which can then reach its
        // check-backs) before the first order's half message.
        let stock = topic_name(&settings.prefix, Topic::Stock);
        let mut tx_producer = TransactionMQProducer::builder(client.clone())
            .producer_group(format!("{}tx_producer", settings.prefix))
            .name_server_addr(settings.namesrv.clone())
            .send_msg_timeout(settings.send_timeout_ms as _)
            .check_thread_pool_min_size(4)
            .check_thread_pool_max_size(16)
            .transaction_listener(listener)
            .topics(vec![stock])
            .build();
        if let Err(e) = tx_producer.start().await {
            producer.shutdown().await;
            return Err(mq_err("transactional producer start", e));
        }
        Ok(RocketMqBus {
            settings,
            app,
            client,
            tx_producer: tokio::sync::RwLock::new(tx_producer),
            producer,
            consumers: tokio::sync::Mutex::new(Vec::new()),
            _owner: owner,
        })
    }

    fn topic(&self, topic: Topic) -> String {
        topic_name(&self.settings.prefix, topic)
    }

    fn message(&self, event: &Event) -> Result<Message, MqError> {
        self.message_after(event, None)
    }

    fn message_after(&self, event: &Event, delay: Option<Duration>) -> Result<Message, MqError> {
        let body = serde_json::to_vec(event).map_err(|e| mq_err("encode", e))?;
        let mut b = Message::builder()
            .topic(self.topic(event.topic()))
            .tags(event.topic().name())
            .key(event.key())
            .body(body);
        if let Some(d) = delay {
            b = b.delay_millis((d.as_millis() as u64).max(1));
        }
        b.build().map_err(|e| mq_err("message", e))
    }
}

/// A topic's name on the broker: the deployment's prefix, then its own.
fn topic_name(prefix: &str, topic: Topic) -> String {
    format!("{prefix}{}", topic.name())
}

/// Whether a route look-up found queues to send to.
fn routed(r: &rocketmq_client_rust::ClientResult<Vec<MessageQueue>>) -> bool {
    r.as_ref().is_ok_and(|q| !q.is_empty())
}

/// The topics and their queue counts.
const TOPICS: [(Topic, i32); 5] = [
    (Topic::Stock, 4),
    (Topic::Cache, 1),
    (Topic::PaymentDue, 2),
    (Topic::CacheRepair, 1),
    (Topic::Health, 1),
];

/// Waits until the name server routes each topic, creating the ones it does
/// not (a topic an operator made beforehand, with queues of their choosing,
/// is left as it is), retrying every 250 ms up to `settings.start_timeout`.
/// Past it the instance starts all the same, with a warning: a broker that
/// registers later creates a topic on its first message
/// (`autoCreateTopicEnable`, with the client's default queue count); until
/// then sends fail (503).
async fn route_topics(producer: &mut DefaultMQProducer, settings: &RocketMqSettings) {
    let until = tokio::time::Instant::now() + settings.start_timeout;
    for (topic, queues) in TOPICS {
        let name = topic_name(&settings.prefix, topic);
        loop {
            let mut outcome = producer.fetch_publish_message_queues(&name).await;
            if !routed(&outcome) {
                outcome = match producer
                    .create_topic("TBW102", &name, queues, HashMap::new())
                    .await
                {
                    Ok(()) => producer.fetch_publish_message_queues(&name).await,
                    Err(e) => Err(e),
                };
            }
            if routed(&outcome) {
                break;
            }
            if tokio::time::Instant::now() >= until {
                tracing::warn!(topic = %name, outcome = ?outcome.err(),
                    "the name server has no route for the topic (is the broker registered?); \
                     starting anyway: its sends fail until the broker routes it");
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn offsets_root() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".rocketmq_offsets"))
        .unwrap_or_else(|| PathBuf::from("/tmp/.rocketmq_offsets"))
}

#[async_trait]
impl MessageBus for RocketMqBus {
    async fn send_in_transaction(&self, event: Event, local: LocalTx) -> Result<TxState, MqError> {
        let msg = self.message(&event)?;
        let slot = LocalSlot(Mutex::new(Some(local)));
        let result = self
            .tx_producer
            .read()
            .await
            .send_message_in_transaction(msg, Some(slot))
            .await
            .map_err(|e| mq_err("transactional send", e))?;
        Ok(result
            .local_transaction_state
            .map(from_rocketmq)
            .unwrap_or(TxState::Unknown))
    }

    async fn publish(&self, event: Event) -> Result<(), MqError> {
        let msg = self.message(&event)?;
        match self
            .producer
            .send_with_timeout(msg, self.settings.send_timeout_ms)
            .await
        {
            Ok(Some(r)) if r.send_status == SendStatus::SendOk => Ok(()),
            Ok(other) => Err(mq_err("send not stored", other)),
            Err(e) => Err(mq_err("send", e)),
        }
    }

    async fn publish_delayed(&self, event: Event, delay: Duration) -> Result<(), MqError> {
        let msg = self.message_after(&event, Some(delay))?;
        match self
            .producer
            .send_with_timeout(msg, self.settings.send_timeout_ms)
            .await
        {
            Ok(Some(r)) if r.send_status == SendStatus::SendOk => Ok(()),
            Ok(other) => Err(mq_err("delayed send not stored", other)),
            Err(e) => Err(mq_err("delayed send", e)),
        }
    }

    async fn subscribe(
        &self,
        topic: Topic,
        group: &str,
        delivery: Delivery,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<(), MqError> {
        let group = format!("{}{}", self.settings.prefix, group);
        let listener = Consumer {
            app: self.app.clone(),
            handler,
            deadline: self.settings.listener_deadline,
            group: group.clone(),
        };
        let mut cc = ClientConfig::new();
        cc.set_namesrv_addr(self.settings.namesrv.clone().into());
        let (model, from, threads) = match delivery {
            Delivery::Clustering => (
                MessageModel::Clustering,
                ConsumeFromWhere::ConsumeFromFirstOffset,
                8,
            ),
            Delivery::Broadcast => {
                // A broadcast consumer keeps offsets in a local folder the
                // client does not create, under a name that must be unique.
                cc.set_instance_name(format!("{}-{}", self.settings.instance, group).into());
                let dir = offsets_root().join(cc.build_mq_client_id()).join(&group);
                std::fs::create_dir_all(&dir).map_err(|e| mq_err("offsets folder", e))?;
                // A starting instance caches nothing: earlier invalidations
                // do not concern it.
                (
                    MessageModel::Broadcasting,
                    ConsumeFromWhere::ConsumeFromLastOffset,
                    2,
                )
            }
        };
        let mut consumer = DefaultMQPushConsumer::builder(self.client.clone())
            .client_config(cc)
            .consumer_group(group.clone())
            .message_model(model)
            .consume_from_where(from)
            .consume_thread_min(threads)
            .consume_thread_max(threads * 2)
            .build();
        consumer
            .subscribe(self.topic(topic), "*")
            .await
            .map_err(|e| mq_err("subscribe", e))?;
        consumer.register_message_listener_concurrently(listener);
        consumer
            .start()
            .await
            .map_err(|e| mq_err("consumer start", e))?;
        self.consumers.lock().await.push(consumer);
        Ok(())
    }

    async fn ping(&self) -> Result<(), MqError> {
        // A real round trip to a broker: the name server alone says nothing
        // about whether messages can be stored.
        let msg = Message::builder()
            .topic(self.topic(Topic::Health))
            .body(b"ping".to_vec())
            .build()
            .map_err(|e| mq_err("message", e))?;
        match self
            .producer
            .send_with_timeout(msg, self.settings.send_timeout_ms.min(1_000))
            .await
        {
            Ok(Some(r)) if r.send_status == SendStatus::SendOk => Ok(()),
            Ok(other) => Err(mq_err("broker did not store the ping", other)),
            Err(e) => Err(mq_err("broker unreachable", e)),
        }
    }

    async fn shutdown(&self) {
        // Consumers first, all at once: each finishes the messages in hand,
        // stores its offsets and unregisters; the group's other members
        // take its queues at their next rebalance.
        let mut consumers: Vec<_> = self.consumers.lock().await.drain(..).collect();
        futures::future::join_all(consumers.iter_mut().map(|c| c.shutdown())).await;
        self.tx_producer.write().await.shutdown().await;
        // A handle on the same producer (clones share it).
        self.producer.clone().shutdown().await;
        let _ = self.client.shutdown().await;
    }
}
