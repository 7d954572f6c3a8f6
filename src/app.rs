//! The wiring: the one place that names concrete adapters. Chooses them
//! from the config, starts the workers, and builds the HTTP state.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::task::TaskTracker;

use crate::cache::memory::{MemoryKvStore, MemoryRateLimiter, MemoryStockLedger};
use crate::cache::redis::{RedisConn, RedisKvStore, RedisRateLimiter, RedisStockLedger};
use crate::cache::{KvStore, RateLimiter, StockLedger};
use crate::config::{Config, DatabaseBackend};
use crate::http::{AppState, Services};
use crate::mq::memory::{MemoryBus, MemoryBusSettings};
use crate::mq::rocketmq::{RocketMqBus, RocketMqSettings};
use crate::mq::{Delivery, MessageBus, Topic};
use crate::service::catalog::CatalogService;
use crate::service::checkback::StockLogChecker;
use crate::service::deadline_hold;
use crate::service::monitor::{self, SaleMonitor};
use crate::service::node_lease::NodeLease;
use crate::service::orders::OrderService;
use crate::service::otp::{DevOtpSender, OtpSender, WebhookOtpSender};
use crate::service::sold_out::SoldOutFlags;
use crate::service::tokens::TokenService;
use crate::service::users::UserService;
use crate::service::{Context, Ports};
use crate::store::detached::Detached;
use crate::store::mysql::MysqlStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{PoolLimits, Store};
use crate::worker::{
    cache_invalidation::{self, CacheInvalidation},
    payment_due, reconciler, stock_consumer,
};

/// A wired application: the HTTP state plus handles tests and tools use.
pub struct App {
    pub state: AppState,
    pub context: Context,
    /// The dev one-time-code sender (reads the last code of a phone).
    pub otp: Arc<DevOtpSender>,
    /// The in-process bus, when that is the bus in use (fault injection).
    pub memory_bus: Option<MemoryBus>,
    /// The in-process ledger, when that is the ledger in use (fault
    /// injection).
    pub memory_ledger: Option<Arc<MemoryStockLedger>>,
    /// The in-process key-value store, when that is the one in use (fault
    /// injection).
    pub memory_kv: Option<Arc<MemoryKvStore>>,
    /// This instance's node id lease (of `SECKILL_NODE_ID` when set).
    pub node_lease: Arc<NodeLease>,
}

impl App {
    /// Gives back what other processes wait for, on every way out: the
    /// node id (a configured one's restart takes it at once), then the
    /// bus (its consumers leave their groups, whose other members take
    /// their queues at their next rebalance; check-backs go elsewhere) —
    /// within `rocketmq_send_timeout_ms`, a few calls to the broker.
    pub async fn leave(&self) {
        self.node_lease.release(&self.context.ids).await;
        leave_bus(&*self.state.ports.bus, &self.context.config).await;
    }
}

/// Shuts the bus down within `rocketmq_send_timeout_ms` (a few calls to
/// the broker), whatever it is doing.
async fn leave_bus(bus: &dyn MessageBus, config: &Config) {
    let within = Duration::from_millis(config.rocketmq_send_timeout_ms);
    if tokio::time::timeout(within, bus.shutdown()).await.is_err() {
        tracing::warn!("the message bus did not stop in time; exiting anyway");
    }
}

/// The process's Prometheus recorder, installed once.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; ours then renders empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// How often the recorder's histogram samples are folded into their buckets
/// (the exporter's own default when it runs its HTTP listener).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Folds the recorded histogram samples into their buckets. The recorder
/// keeps every sample until a scrape of `/metrics` or this upkeep drains
/// them: an instance nobody scrapes grew by every request it answered
/// (~5 MB after one 10,000-buyer drill, more under wrk).
async fn metrics_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Opens the configured database and applies its migrations. Its calls run
/// to completion whoever stops waiting for them ([`Detached`]: a cut-off
/// sqlx call can leave a pooled connection inside a transaction, or lose it),
/// each a task of `tasks`.
pub async fn open_store(config: &Config, tasks: &TaskTracker) -> anyhow::Result<Arc<dyn Store>> {
    let limits = |max_connections, lock_wait_ms| PoolLimits {
        max_connections,
        acquire_timeout: Duration::from_millis(config.database_acquire_timeout_ms),
        lock_wait: Duration::from_millis(lock_wait_ms),
        deadlock_retries: config.database_deadlock_retries,
    };
    match config.database()? {
        DatabaseBackend::Sqlite(url) => {
            let store = SqliteStore::connect(
                &url,
                limits(config.sqlite_max_connections, config.sqlite_busy_timeout_ms),
                config.sqlite_cache_kib,
            )
            .await
            .with_context(|| format!("cannot open the SQLite database {url}"))?;
            store
                .migrate()
                .await
                .context("cannot migrate the SQLite database")?;
            Ok(detached(Arc::new(store), tasks))
        }
        DatabaseBackend::Mysql(url) => {
            let store = MysqlStore::connect(
                &url,
                limits(config.database_max_connections, config.local_tx_timeout_ms),
            )
            .await
            .with_context(|| format!("cannot reach MySQL at {}", crate::config::redact(&url)))?;
            store
                .migrate()
                .await
                .context("cannot migrate the MySQL database")?;
            Ok(detached(Arc::new(store), tasks))
        }
    }
}

/// The store as services use it: each call runs to its end in a task of
/// its own, and a write starting for a request its deadline cut off is
/// refused (`service::deadline_hold`).
fn detached(store: Arc<dyn Store>, tasks: &TaskTracker) -> Arc<dyn Store> {
    Detached::gated(store, tasks.clone(), deadline_hold::hold_current)
}

/// The fast-state adapters: Redis when configured, else in-memory.
struct CacheAdapters {
    ledger: Arc<dyn StockLedger>,
    memory_ledger: Option<Arc<MemoryStockLedger>>,
    kv: Arc<dyn KvStore>,
    memory_kv: Option<Arc<MemoryKvStore>>,
    limiter: Arc<dyn RateLimiter>,
}

async fn cache_adapters(config: &Config) -> anyhow::Result<CacheAdapters> {
    let Some(url) = &config.redis_url else {
        let ledger = Arc::new(MemoryStockLedger::new());
        let kv = Arc::new(MemoryKvStore::new());
        return Ok(CacheAdapters {
            ledger: ledger.clone(),
            memory_ledger: Some(ledger),
            kv: kv.clone(),
            memory_kv: Some(kv),
            limiter: Arc::new(MemoryRateLimiter::new()),
        });
    };
    let timeout = Duration::from_millis(config.redis_timeout_ms);
    let conn = RedisConn::connect(url, &config.redis_prefix, timeout)
        .await
        .with_context(|| format!("cannot reach Redis at {}", crate::config::redact(url)))?;
    Ok(CacheAdapters {
        ledger: Arc::new(RedisStockLedger::new(conn.clone())),
        memory_ledger: None,
        kv: Arc::new(RedisKvStore::new(conn.clone())),
        memory_kv: None,
        limiter: Arc::new(RedisRateLimiter::new(conn)),
    })
}

/// Wires every port and service from `config` and starts the workers.
pub async fn build(config: Config) -> anyhow::Result<App> {
    // The recorder first: handles registered before it would count nowhere.
    let metrics = metrics_handle();
    config.validate()?;
    let config = Arc::new(config);
    let background = TaskTracker::new();
    let store = open_store(&config, &background).await?;
    let otp = Arc::new(DevOtpSender::new());
    let otp_sender: Arc<dyn OtpSender> = match &config.otp_webhook_url {
        Some(url) => Arc::new(WebhookOtpSender::new(
            url,
            config.otp_webhook_token.as_ref().map(|t| t.0.as_str()),
            Duration::from_millis(config.otp_webhook_timeout_ms),
        )?),
        None => {
            if config.redis_url.is_some() {
                tracing::warn!(
                    "one-time codes are only logged (the dev sender): set SECKILL_OTP_WEBHOOK_URL \
                     to hand them to an SMS gateway"
                );
            }
            otp.clone()
        }
    };
    let checker = Arc::new(StockLogChecker::new(store.clone()));
    let caches = cache_adapters(&config).await?;
    let ttl = Duration::from_millis(config.node_lease_ttl_ms);
    let node_lease = match config.node_id {
        Some(node) => Arc::new(
            NodeLease::claim(caches.kv.clone(), node, ttl)
                .await
                .context("cannot claim the configured node id")?,
        ),
        None => {
            let lease = NodeLease::acquire(caches.kv.clone(), ttl)
                .await
                .context("cannot lease a node id")?
                .context(
                    "every node id (0..=1023) is leased by a running instance: stop one, or \
                     wait SECKILL_NODE_LEASE_TTL_MS for a crashed one's to lapse",
                )?;
            Arc::new(lease)
        }
    };
    // The generator at once, and the lease kept from here: building the
    // rest (the RocketMQ client) may take longer than the lease's TTL.
    let ids = Arc::new(node_lease.ids());
    tokio::spawn(node_lease.clone().keep(
        ids.clone(),
        Duration::from_millis(config.heartbeat_interval_ms),
    ));
    // Whatever fails from here gives the node id back at once: a
    // configured one would otherwise keep its restart waiting (no orders)
    // until the lease's TTL ran out.
    // The bus, once started, is shut down on a failure after it too: its
    // consumers would otherwise hold their queues until the broker missed
    // their heartbeats.
    let started_bus: parking_lot::Mutex<Option<Arc<dyn MessageBus>>> = Default::default();
    let leaving = config.clone();
    let built: anyhow::Result<App> = async {
        let node = ids.node();
        let (bus, memory_bus): (Arc<dyn MessageBus>, Option<MemoryBus>) = match &config
            .rocketmq_namesrv
        {
            Some(namesrv) => {
                let settings = RocketMqSettings {
                    namesrv: namesrv.clone(),
                    prefix: config.rocketmq_prefix.clone(),
                    instance: format!("seckill-{}-{node}", std::process::id()),
                    listener_deadline: Duration::from_millis(config.rocketmq_listener_deadline_ms),
                    send_timeout_ms: config.rocketmq_send_timeout_ms,
                    start_timeout: Duration::from_millis(config.rocketmq_start_timeout_ms),
                };
                let bus = RocketMqBus::start(settings, checker)
                    .await
                    .with_context(|| {
                        format!("cannot start the RocketMQ client for name server {namesrv}")
                    })?;
                (Arc::new(bus), None)
            }
            None => {
                let bus = MemoryBus::start(
                    checker,
                    MemoryBusSettings {
                        check_after: Duration::from_millis(config.tx_check_after_ms),
                        check_interval: Duration::from_millis(config.tx_check_interval_ms),
                        check_max: config.tx_check_max,
                        listener_deadline: Duration::from_millis(
                            config.rocketmq_listener_deadline_ms,
                        ),
                        ..MemoryBusSettings::default()
                    },
                );
                (Arc::new(bus.clone()), Some(bus))
            }
        };
        *started_bus.lock() = Some(bus.clone());
        let ports = Ports {
            store: store.clone(),
            ledger: caches.ledger,
            kv: caches.kv,
            limiter: caches.limiter,
            bus,
            otp: otp_sender,
        };

        let context = Context {
            config: config.clone(),
            ports: ports.clone(),
            ids: ids.clone(),
            sold_out: Arc::new(SoldOutFlags::with_poll(
                Duration::from_millis(config.local_sold_out_ttl_ms),
                Duration::from_millis(config.sold_out_poll_ms),
            )),
            buyer_pace: Arc::new(crate::service::buyer_pace::BuyerPace::new(
                config.buyer_rate_per_sec,
            )),
            recovery: Arc::new(crate::service::recovery::LedgerRecovery::new()),
            background,
        };
        let catalog = Arc::new(CatalogService::new(context.clone()));
        let tokens = Arc::new(TokenService::new(context.clone(), catalog.clone()));
        let orders = Arc::new(OrderService::new(
            context.clone(),
            catalog.clone(),
            tokens.clone(),
        ));
        let users = Arc::new(UserService::new(context.clone()));

        ports
            .bus
            .subscribe(
                Topic::Stock,
                stock_consumer::GROUP,
                Delivery::Clustering,
                Arc::new(stock_consumer::StockConsumer::new(
                    store.clone(),
                    ports.kv.clone(),
                    ports.bus.clone(),
                    context.background.clone(),
                    Duration::from_millis(context.config.item_cache_double_delete_ms),
                )),
            )
            .await?;
        ports
            .bus
            .subscribe(
                Topic::CacheRepair,
                cache_invalidation::REPAIR_GROUP,
                Delivery::Clustering,
                Arc::new(cache_invalidation::CacheRepair::new(
                    ports.kv.clone(),
                    ports.bus.clone(),
                )),
            )
            .await?;
        ports
            .bus
            .subscribe(
                Topic::Cache,
                "seckill_cache",
                Delivery::Broadcast,
                Arc::new(CacheInvalidation::new(catalog.clone(), users.clone())),
            )
            .await?;
        ports
            .bus
            .subscribe(
                Topic::PaymentDue,
                payment_due::GROUP,
                Delivery::Clustering,
                Arc::new(payment_due::PaymentDueConsumer::new(context.clone())),
            )
            .await?;
        tokio::spawn(reconciler::run(context.clone()));
        tokio::spawn(metrics_upkeep(metrics.clone()));
        let monitor = Arc::new(SaleMonitor::new(context.clone()));
        tokio::spawn(monitor::run_heartbeat(
            monitor.clone(),
            Duration::from_millis(config.heartbeat_interval_ms),
        ));

        let buying_gate = (config.order_path_max_in_flight > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(config.order_path_max_in_flight)));
        let state = AppState::new(Services {
            config,
            ports,
            users,
            catalog,
            tokens,
            orders,
            monitor,
            metrics,
            buying_gate,
        });
        Ok(App {
            state,
            context,
            otp,
            memory_bus,
            memory_ledger: caches.memory_ledger,
            memory_kv: caches.memory_kv,
            node_lease: node_lease.clone(),
        })
    }
    .await;
    if built.is_err() {
        node_lease.release(&ids).await;
        let bus = started_bus.lock().take();
        if let Some(bus) = bus {
            leave_bus(&*bus, &leaving).await;
        }
    }
    built
}
