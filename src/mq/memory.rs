//! The in-process bus. It keeps RocketMQ's transactional semantics so that
//! tests of the order flow mean something for the real broker: a half
//! message is invisible until committed; an unresolved one is checked back
//! after `check_after`, every `check_interval`, at most `check_max` times,
//! then parked (as the broker does after 15 checks); committed messages are
//! delivered at least once, redelivered after a handler error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::*;

/// Timings of the in-process bus.
#[derive(Debug, Clone)]
pub struct MemoryBusSettings {
    pub check_after: Duration,
    pub check_interval: Duration,
    pub check_max: u32,
    pub redelivery_delay: Duration,
    pub max_redeliveries: u32,
    /// A check-back's and a consumer call's deadline, as the RocketMQ
    /// client's listener has (`rocketmq_listener_deadline_ms`): past it a
    /// check-back is "unknown" and a consumer call is delivered again, so
    /// one hung call does not stop the topic behind it.
    pub listener_deadline: Duration,
}

impl Default for MemoryBusSettings {
    fn default() -> Self {
        MemoryBusSettings {
            check_after: Duration::from_secs(3),
            check_interval: Duration::from_secs(1),
            check_max: 15,
            redelivery_delay: Duration::from_millis(500),
            max_redeliveries: 16,
            listener_deadline: Duration::from_secs(10),
        }
    }
}

struct HalfMessage {
    event: Event,
    stored_at: Instant,
    checks: u32,
    /// The sender's local transaction is still running: not checked back
    /// (the sender answers for it itself).
    local_running: bool,
}

struct Subscriber {
    topic: Topic,
    tx: mpsc::UnboundedSender<Event>,
}

struct Inner {
    settings: MemoryBusSettings,
    checker: Arc<dyn TxChecker>,
    half: Mutex<HashMap<u64, HalfMessage>>,
    next_id: AtomicU64,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Messages committed before any consumer subscribed to their topic.
    backlog: Mutex<Vec<Event>>,
    parked: AtomicU64,
    refuse_sends: AtomicBool,
    /// Shut down: sends refused, nothing delivered to this process's
    /// consumers any more.
    closed: AtomicBool,
    /// Fault injection: how long a half message takes to reach the broker
    /// (ms; 0: at once).
    send_delay_ms: AtomicU64,
}

/// The in-process transactional bus. Cheap to clone.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl MemoryBus {
    /// Creates the bus and starts its check-back loop (which ends when the
    /// last clone is dropped). Must be called inside a Tokio runtime.
    pub fn start(checker: Arc<dyn TxChecker>, settings: MemoryBusSettings) -> Self {
        let inner = Arc::new(Inner {
            settings,
            checker,
            half: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            subscribers: Mutex::new(Vec::new()),
            backlog: Mutex::new(Vec::new()),
            parked: AtomicU64::new(0),
            refuse_sends: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            send_delay_ms: AtomicU64::new(0),
        });
        tokio::spawn(check_back_loop(Arc::downgrade(&inner)));
        MemoryBus { inner }
    }

    /// Half messages not yet resolved.
    pub fn pending_half_messages(&self) -> usize {
        self.inner.half.lock().len()
    }

    /// Half messages given up after `check_max` check-backs.
    pub fn parked(&self) -> u64 {
        self.inner.parked.load(Ordering::Relaxed)
    }

    /// Fault injection: while true every send fails as if the broker were
    /// down.
    pub fn refuse_sends(&self, refuse: bool) {
        self.inner.refuse_sends.store(refuse, Ordering::Relaxed);
    }

    /// Fault injection: every half message takes `delay` to reach the
    /// broker (a slow broker), before its local transaction runs.
    pub fn delay_sends(&self, delay: Duration) {
        self.inner
            .send_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Refused once the bus is shut down.
    fn open(&self) -> Result<(), MqError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(MqError("in-process bus shut down".into()));
        }
        Ok(())
    }

    /// Why a send is refused now, if it is.
    fn refusal(&self) -> Result<(), MqError> {
        self.open()?;
        if self.inner.refuse_sends.load(Ordering::Relaxed) {
            return Err(MqError(
                "in-process bus refusing sends (fault injection)".into(),
            ));
        }
        Ok(())
    }

    fn deliver(inner: &Inner, event: Event) {
        let subs = inner.subscribers.lock();
        let mut delivered = false;
        for s in subs.iter().filter(|s| s.topic == event.topic()) {
            delivered |= s.tx.send(event.clone()).is_ok();
        }
        if !delivered {
            inner.backlog.lock().push(event);
        }
    }
}

async fn check_back_loop(inner: Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(i) => i.settings.check_interval,
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let due: Vec<(u64, Event)> = {
            let half = inner.half.lock();
            half.iter()
                .filter(|(_, h)| {
                    !h.local_running && h.stored_at.elapsed() >= inner.settings.check_after
                })
                .map(|(id, h)| (*id, h.event.clone()))
                .collect()
        };
        for (id, event) in due {
            let state = tokio::time::timeout(
                inner.settings.listener_deadline,
                inner.checker.check(&event),
            )
            .await
            .unwrap_or(TxState::Unknown);
            metrics::counter!("seckill_checkbacks_total", "outcome" => state.as_str()).increment(1);
            let mut half = inner.half.lock();
            match state {
                TxState::Commit => {
                    if let Some(h) = half.remove(&id) {
                        drop(half);
                        MemoryBus::deliver(&inner, h.event);
                    }
                }
                TxState::Rollback => {
                    half.remove(&id);
                }
                TxState::Unknown => {
                    if let Some(h) = half.get_mut(&id) {
                        h.checks += 1;
                        if h.checks >= inner.settings.check_max {
                            half.remove(&id);
                            inner.parked.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(key = %event.key(), "half message parked after the last check-back; the reconciler settles its stock_log");
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl MessageBus for MemoryBus {
    async fn send_in_transaction(&self, event: Event, local: LocalTx) -> Result<TxState, MqError> {
        self.refusal()?;
        let delay = self.inner.send_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.half.lock().insert(
            id,
            HalfMessage {
                event,
                stored_at: Instant::now(),
                checks: 0,
                local_running: true,
            },
        );
        let state = local().await;
        if let Some(h) = self.inner.half.lock().get_mut(&id) {
            h.local_running = false;
        }
        match state {
            TxState::Commit => {
                let h = self.inner.half.lock().remove(&id);
                if let Some(h) = h {
                    MemoryBus::deliver(&self.inner, h.event);
                }
            }
            TxState::Rollback => {
                self.inner.half.lock().remove(&id);
            }
            TxState::Unknown => {}
        }
        Ok(state)
    }

    async fn publish(&self, event: Event) -> Result<(), MqError> {
        self.refusal()?;
        MemoryBus::deliver(&self.inner, event);
        Ok(())
    }

    async fn publish_delayed(&self, event: Event, delay: Duration) -> Result<(), MqError> {
        self.refusal()?;
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(inner) = inner.upgrade() {
                MemoryBus::deliver(&inner, event);
            }
        });
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: Topic,
        group: &str,
        _delivery: Delivery,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<(), MqError> {
        self.open()?;
        // One process: each subscription is its group's only consumer, so
        // clustering and broadcast deliver alike.
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let backlog: Vec<Event> = {
            let mut b = self.inner.backlog.lock();
            let (mine, rest): (Vec<_>, Vec<_>) = b.drain(..).partition(|e| e.topic() == topic);
            *b = rest;
            mine
        };
        for e in backlog {
            let _ = tx.send(e);
        }
        self.inner.subscribers.lock().push(Subscriber { topic, tx });
        let settings = self.inner.settings.clone();
        let group = group.to_owned();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let mut attempt = 0;
                loop {
                    let handled =
                        tokio::time::timeout(settings.listener_deadline, handler.handle(&event))
                            .await
                            .unwrap_or_else(|_| {
                                Err(anyhow::anyhow!(
                                    "no answer within {:?}",
                                    settings.listener_deadline
                                ))
                            });
                    match handled {
                        Ok(()) => break,
                        Err(e) if attempt < settings.max_redeliveries => {
                            attempt += 1;
                            tracing::warn!(group = %group, key = %event.key(), attempt, error = %format!("{e:#}"), "consumer failed; redelivering");
                            tokio::time::sleep(settings.redelivery_delay).await;
                        }
                        Err(e) => {
                            tracing::error!(group = %group, key = %event.key(), error = %format!("{e:#}"), "consumer gave up after the last redelivery (dead letter)");
                            break;
                        }
                    }
                }
            }
        });
        Ok(())
    }

    async fn ping(&self) -> Result<(), MqError> {
        self.refusal()
    }

    async fn shutdown(&self) {
        // Consumers finish what they were handed and end; what comes later
        // waits in the backlog (one process: no other member to take it).
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.subscribers.lock().clear();
    }
}
