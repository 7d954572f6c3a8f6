//! Settings, loaded once: built-in defaults → optional TOML file → `SECKILL_*`
//! environment variables → command-line flags. [`Config::validate`] turns
//! them into typed backends and refuses bad combinations with a sentence
//! that says what to fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A secret string: never printed by `Debug`.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

pub use crate::domain::OrderStrategy;

/// Every setting, with its default. Field names are the lower-case
/// `SECKILL_*` variable names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http_addr: String,
    pub database_url: String,
    /// The MySQL pool's size per instance.
    pub database_max_connections: u32,
    /// The longest wait for a pooled database connection (MySQL and
    /// SQLite); past it the call fails with 503 and writes nothing.
    pub database_acquire_timeout_ms: u64,
    /// How many times a write transaction the database picked as a
    /// deadlock's victim (MySQL's 1213: rolled back whole) is run again
    /// before its caller gets 503.
    pub database_deadlock_retries: u32,
    /// The SQLite reading pool's size (writes have one connection of their
    /// own: SQLite takes one writer at a time; WAL readers beyond the cores
    /// buy nothing, and each connection holds its page cache and prepared
    /// statements — 16 held ~55 MB after one drill).
    pub sqlite_max_connections: u32,
    /// SQLite only: each pooled connection's page cache, KiB.
    pub sqlite_cache_kib: u32,
    /// SQLite only: a statement's longest wait for the database's one
    /// write lock while another process holds it (the busy time-out). This
    /// process's writers — batches, sweeps, admin writes — queue for their
    /// one connection instead, up to `database_acquire_timeout_ms`.
    pub sqlite_busy_timeout_ms: u64,
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (several deployments can share a Redis).
    pub redis_prefix: String,
    /// The longest wait for Redis: a connection attempt, then each
    /// command's answer (past it the call fails with 503).
    pub redis_timeout_ms: u64,
    pub rocketmq_namesrv: Option<String>,
    /// Prefix of RocketMQ topics and groups (several deployments can share
    /// a broker).
    pub rocketmq_prefix: String,
    /// Deadline of a local transaction, check-back or consumer call run from
    /// the RocketMQ client's threads (below its 30 s task limit); the
    /// in-process bus cuts its check-backs and consumer calls off at it too.
    pub rocketmq_listener_deadline_ms: u64,
    /// How long a send to the broker waits for it to store the message (a
    /// half message, a broadcast, a delayed message); past it the send
    /// failed: an order's batch gives its reservations back.
    pub rocketmq_send_timeout_ms: u64,
    /// How long start-up waits for the name server to route the topics (a
    /// broker just started registers with it a moment after it listens);
    /// past it the instance starts with a warning, its sends failing until
    /// the broker is registered.
    pub rocketmq_start_timeout_ms: u64,
    /// How long `/readyz` and the heartbeat wait for each dependency (the
    /// database, Redis, the broker) to answer before calling it down. A
    /// pooled database's answer waits for a free connection: under a crowd
    /// of pure-DB orders the pool can be busy for longer than an idle
    /// answer takes.
    pub health_check_timeout_ms: u64,
    pub admin_token: Option<Secret>,
    pub captcha_enabled: bool,
    /// Log each captcha's answer at `info` (for automated browser tests
    /// only; never in production: it defeats the captcha for anyone who can
    /// read the log).
    pub captcha_log_answers: bool,
    /// Comma-separated origins allowed credentialed CORS.
    pub cors_origins: String,
    pub order_strategy: OrderStrategy,
    /// Folder of the web pages; when it does not exist, the `web` folder of
    /// the source tree the binary was built from is tried (a start-up
    /// warning names both when neither exists).
    pub web_dir: PathBuf,
    /// This instance's node id in order numbers (0..=1023), claimed in the shared Redis (no orders while another process holds it); unset: any free one leased from the shared Redis (unique among the instances sharing it; see `service::node_lease`), or from the in-process store without Redis.
    pub node_id: Option<u16>,
    /// How long a leased node id stays leased without renewal (renewed every
    /// heartbeat, at most every third of it; an instance that cannot renew
    /// it for this long takes no orders). A crashed instance's id is free
    /// again after it.
    pub node_lease_ttl_ms: u64,
    /// Set the session cookie's `Secure` flag (behind HTTPS).
    pub cookie_secure: bool,

    pub session_ttl_secs: u64,
    /// How long an instance reuses a session it looked up (0: ask the
    /// shared store every time). A log-out is broadcast to every instance;
    /// this is the bound should the broadcast be lost.
    pub session_cache_ttl_ms: u64,
    /// Sessions an instance keeps in that cache at most.
    pub session_cache_capacity: u64,
    pub otp_ttl_secs: u64,
    /// Where one-time codes go: `POST` `{"phone", "code"}` to this URL (the
    /// SMS gateway). Unset: the dev sender logs them (local use only).
    pub otp_webhook_url: Option<String>,
    /// Sent to the webhook as `Authorization: Bearer …` when set.
    pub otp_webhook_token: Option<Secret>,
    /// The webhook's longest wait for an answer; past it the code is not
    /// sent (503).
    pub otp_webhook_timeout_ms: u64,
    pub otp_per_phone_per_hour: u32,
    pub login_attempts_per_phone_per_minute: u32,
    /// Login attempts one client address may make per minute (0: no limit).
    pub login_attempts_per_ip_per_minute: u32,
    /// One-time codes one client address may ask for per hour (0: no limit).
    pub otp_per_ip_per_hour: u32,
    /// The request header that carries the client's address when a trusted
    /// proxy sets it (nginx: `x-real-ip`); unset, the peer address is used.
    /// Set it only behind a proxy that overwrites the header; of a list
    /// (`x-forwarded-for`) the last address is taken, the one the proxy
    /// next to us appended.
    pub client_ip_header: Option<String>,
    /// On SIGTERM, how long in-flight requests, their batches and the
    /// store calls of requests cut off may take, all told, before the
    /// process exits anyway (then it leaves the instance list and gives
    /// its node id back: a few Redis calls, each bounded by
    /// `redis_timeout_ms`). At least `request_timeout_ms`: a request in
    /// flight at the signal gets its whole deadline.
    pub shutdown_timeout_secs: u64,
    pub captcha_ttl_secs: u64,
    /// Captchas one user may draw per minute (each is an image drawn on a
    /// blocking thread).
    pub captcha_per_user_per_minute: u32,
    /// Captchas drawn at once on this instance (each is a few milliseconds
    /// of a core); past it, 429 at once rather than a queue of drawings
    /// that outlive their requests and starve the order path.
    pub captcha_max_in_flight: u32,
    pub seckill_token_ttl_secs: u64,
    /// Buyers a promo hands tokens to = stock × this factor (a buyer's
    /// later tokens of the same promo take no permit).
    pub gate_factor: u32,
    /// Units one user may buy in one promo (one order).
    pub per_user_limit: i64,
    /// Order requests admitted per second (token bucket): by all the
    /// instances sharing a Redis together (a global limit), or by this
    /// process without one.
    pub order_rate_per_sec: u32,
    /// Token requests admitted per second, the same way.
    pub token_rate_per_sec: u32,
    /// Token and order requests of one buyer per second on one instance
    /// (and as many at once), before the shared limits above.
    pub buyer_rate_per_sec: u32,
    /// Orders admitted in flight at once; beyond, `429` at once.
    pub order_queue_capacity: usize,
    /// Buying requests (token and order) one instance works on at once;
    /// past it they are answered 429 at once, before any work (0: no
    /// limit). An overload guard: it bounds the memory and the work a
    /// crowd can pile onto one instance. Set low it does not buy latency on
    /// a CPU-bound machine — the shed requests come back and cost CPU too
    /// (docs/BENCHMARKS.md).
    pub order_path_max_in_flight: usize,
    /// Connections the kernel queues for accepting (capped by
    /// `net.core.somaxconn`).
    pub http_backlog: u32,
    /// Park idle keep-alive connections: between two requests a connection
    /// holds its socket only, not hyper's buffers and state (~1 KiB instead
    /// of ~10 KiB; `src/http/connection.rs`).
    pub http_park_idle: bool,
    /// A connection's own wake-ups (hyper's, for every request with a body)
    /// answered in its poll, not through the runtime's queue and a sibling
    /// worker's wake-up (`src/http/inline_wakes.rs`). Off: as hyper and
    /// tokio do it.
    pub http_inline_wakes: bool,
    /// A keep-alive connection with no request for this long, or a request
    /// head not read whole this long after it began, is closed (0: never).
    /// Above nginx's upstream `keepalive_timeout` (60 s in `deploy/nginx`),
    /// so nginx always closes first.
    pub http_idle_timeout_secs: u64,
    /// How often, at most, a runtime thread that goes idle hands the
    /// memory its allocator holds free back to the system (0: never). After
    /// a crowd, the crowd's connection buffers are otherwise kept for the
    /// next one.
    pub memory_release_ms: u64,
    /// Group commit: at most this many orders per local transaction.
    pub batch_max: usize,
    /// Group commit: wait at most this long for a batch to fill.
    pub batch_linger_ms: u64,
    /// Group commits run at once.
    pub batch_workers: usize,
    /// The local transaction's own deadline; past it the outcome is settled
    /// through `stock_log`. Also a MySQL statement's longest wait for a row
    /// lock (`innodb_lock_wait_timeout`, whole seconds).
    pub local_tx_timeout_ms: u64,
    /// Retries of a lost compare-and-set (`db-optimistic`).
    pub cas_retries: u32,
    /// How long a process-local sold-out flag is trusted before the ledger
    /// is asked again.
    pub local_sold_out_ttl_ms: u64,
    /// While a promo is not known sold out here, how often the token path
    /// asks the shared ledger whether another instance sold it out (0:
    /// every token request).
    pub sold_out_poll_ms: u64,
    /// How long promos are cached in-process.
    pub promo_cache_ttl_ms: u64,
    /// Item details cached in-process: at most this many items.
    pub item_cache_capacity: u64,
    /// How long an item detail lives in the process-local cache (the bound
    /// on staleness when an invalidation broadcast is lost).
    pub item_cache_local_ttl_ms: u64,
    /// How long an item detail lives in the shared cache (Redis).
    pub item_cache_shared_ttl_secs: u64,
    /// How long "no such item" is remembered in the shared cache.
    pub item_cache_negative_ttl_ms: u64,
    /// Delayed double delete: the shared entry is deleted again this long
    /// after a write (kills a stale value a concurrent reader wrote back).
    pub item_cache_double_delete_ms: u64,
    /// How long a promo's live ledger stock (a pure-DB sale: the item's DB
    /// stock and sales) is reused for item pages (0: ask on every read).
    pub item_live_stock_ttl_ms: u64,
    /// First check-back this long after a half message (in-process bus).
    pub tx_check_after_ms: u64,
    pub tx_check_interval_ms: u64,
    pub tx_check_max: u32,
    /// `stock_log` rows left `init` longer than this are settled by the
    /// reconciler.
    pub reconcile_after_secs: u64,
    pub reconcile_interval_secs: u64,
    /// The reconciler sweeps a promo's reservation records (write-behind)
    /// while it is on sale and this long after its end.
    pub ledger_sweep_after_end_secs: u64,
    /// At most this many records of one promo a pass (the rest next pass).
    pub ledger_sweep_max_records: usize,
    /// An unpaid order is cancelled (its units given back) this long after
    /// it was placed: a delayed message (a timer in the embedded default),
    /// with the reconciler's sweep behind it.
    pub order_payment_timeout_secs: u64,
    /// Before a promo's ledger is rebuilt from the DB (Redis restarted
    /// empty, or a restarted embedded process), orders wait this long for
    /// the orders in flight at the loss to reach their outcome; a drift repair
    /// also needs the sale unchanged for this long. At least the local
    /// transaction's deadline.
    pub ledger_rebuild_quiet_ms: u64,
    /// Every API request is answered within this deadline (503 UNAVAILABLE
    /// past it, nothing written), but for an order already in its local
    /// transaction or another request whose write started
    /// (`held_order_grace_ms`).
    pub request_timeout_ms: u64,
    /// How long past `request_timeout_ms` an order already in its local
    /// transaction is waited for, to answer its outcome rather than a 503
    /// over an order that commits: the half message's send (`rocketmq_send_timeout_ms`),
    /// the transaction (`local_tx_timeout_ms`) and settling a failed one (a
    /// pooled connection, `database_acquire_timeout_ms`). Past it: 503 with
    /// the outcome unknown. Another request whose database write started
    /// before the deadline (a user, an item, a payment) is waited for as
    /// long.
    pub held_order_grace_ms: u64,
    /// How often each instance flushes its refusal counts and writes its
    /// heartbeat (the admin dashboard's instance list and refusal chart).
    pub heartbeat_interval_ms: u64,
    /// Largest request body accepted, but by the admin API: a buyer's
    /// request is a few hundred bytes, and a token or order request holds
    /// one of the instance's buying places while its body arrives.
    pub max_body_bytes: usize,
    /// Largest request body of the admin API (bulk user creation, item
    /// descriptions).
    pub admin_max_body_bytes: usize,
    /// Accounts per bulk-creation request.
    pub bulk_users_max: usize,
    /// The bulk-creation request's deadline, in place of
    /// `request_timeout_ms`: every account is a password hash (at Argon2's
    /// defaults some tens of milliseconds of a core), all of them computed
    /// before the one write, so a request of thousands outlasts the API's
    /// deadline. At least `request_timeout_ms`.
    pub bulk_users_timeout_ms: u64,
    /// Items per page of `GET /api/v1/items` (its `limit`'s default and
    /// bound), orders per page of `GET /api/v1/orders` (the same), and
    /// promos per page of the admin promo list.
    pub item_list_page_max: u32,
    /// Argon2 memory cost (KiB) and passes; lower only for drills.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    /// Password hashes (sign-up, login, bulk creation) computed at once on this instance;
    /// more wait their turn (within the request's time-out). Each holds
    /// `argon2_memory_kib` and a blocking thread.
    pub password_hashes_max_in_flight: u32,
    /// Logins and sign-ups waiting for one of those places at most; the next
    /// is answered 429 at once (0: no bound). A flood of logins for made-up
    /// phones (each costs a hash) otherwise queues every real one behind it
    /// until the request's time-out. The bulk sign-up waits regardless.
    pub password_hashes_max_waiting: u32,
    /// Seed demo items and a promo at start-up (`serve --demo`).
    pub demo: bool,
}

impl Config {
    /// The staleness bound the item cache states: after an item write
    /// returns, no instance serves the old detail later than this (the
    /// delayed second delete, then at most one local TTL), provided the
    /// writing instance lives to run its second delete. Broadcasts usually
    /// make it much shorter.
    pub fn item_staleness_bound_ms(&self) -> u64 {
        self.item_cache_double_delete_ms + self.item_cache_local_ttl_ms
    }

    /// How long after a promo's end an order admitted before it may still
    /// write its first row (`stock_log`) to the DB: its request's deadline
    /// (a write-behind batch drops the orders whose caller was cut off
    /// before it journals them; a pure-database order starts its
    /// transaction within its request), then the journal insert's own deadline (the local
    /// transaction's). Past it, every order of the sale is in the DB. An
    /// early end (`POST …/end`) reaches another instance by a broadcast; one
    /// that missed it sells on for its promo cache's TTL
    /// (`promo_cache_ttl_ms`), counted too.
    pub fn order_in_flight_bound(&self) -> Duration {
        Duration::from_millis(
            self.request_timeout_ms
                .saturating_add(self.local_tx_timeout_ms)
                .saturating_add(self.promo_cache_ttl_ms),
        )
    }

    /// How long after a promo's end the reconciler's sweep still looks at
    /// its ledger: `ledger_sweep_after_end_secs`, and never less than an
    /// order placed at the end needs to be cancelled unpaid (the payment
    /// time-out, then the unpaid sweep's grace and interval) and its
    /// give-back looked at once more.
    pub fn ledger_sweep_after_end(&self) -> Duration {
        let looked_at_again = self
            .unpaid_cancelled_within()
            .saturating_add(Duration::from_secs(self.reconcile_interval_secs));
        looked_at_again.max(Duration::from_secs(self.ledger_sweep_after_end_secs))
    }

    /// How long after it is placed an order left unpaid is cancelled at the
    /// latest: the payment time-out, then the unpaid sweep's grace and one
    /// of its intervals (its own delayed message may have been lost).
    pub fn unpaid_cancelled_within(&self) -> Duration {
        Duration::from_secs(
            self.order_payment_timeout_secs
                .saturating_add(self.reconcile_after_secs)
                .saturating_add(self.reconcile_interval_secs),
        )
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: "127.0.0.1:8080".into(),
            database_url: "sqlite://data/seckill.db".into(),
            database_max_connections: 16,
            database_acquire_timeout_ms: 5_000,
            database_deadlock_retries: 3,
            sqlite_max_connections: 4,
            sqlite_cache_kib: 512,
            sqlite_busy_timeout_ms: 10_000,
            redis_url: None,
            redis_prefix: "seckill:".into(),
            redis_timeout_ms: 2_000,
            rocketmq_namesrv: None,
            rocketmq_prefix: "seckill-".into(),
            rocketmq_listener_deadline_ms: 10_000,
            rocketmq_send_timeout_ms: 3_000,
            rocketmq_start_timeout_ms: 30_000,
            health_check_timeout_ms: 2_000,
            admin_token: None,
            captcha_enabled: true,
            captcha_log_answers: false,
            cors_origins: String::new(),
            order_strategy: OrderStrategy::WriteBehind,
            web_dir: PathBuf::from("web"),
            node_id: None,
            node_lease_ttl_ms: 30_000,
            cookie_secure: false,
            session_ttl_secs: 24 * 3600,
            session_cache_ttl_ms: 2_000,
            session_cache_capacity: 200_000,
            otp_ttl_secs: 300,
            otp_per_phone_per_hour: 5,
            login_attempts_per_ip_per_minute: 600,
            otp_per_ip_per_hour: 60,
            client_ip_header: None,
            shutdown_timeout_secs: 20,
            login_attempts_per_phone_per_minute: 10,
            captcha_ttl_secs: 120,
            otp_webhook_url: None,
            otp_webhook_token: None,
            otp_webhook_timeout_ms: 3_000,
            captcha_per_user_per_minute: 30,
            captcha_max_in_flight: 8,
            seckill_token_ttl_secs: 300,
            gate_factor: 5,
            per_user_limit: 1,
            order_rate_per_sec: 50_000,
            token_rate_per_sec: 50_000,
            buyer_rate_per_sec: 10,
            order_queue_capacity: 4096,
            order_path_max_in_flight: 8192,
            http_backlog: 8192,
            http_park_idle: true,
            http_inline_wakes: true,
            http_idle_timeout_secs: 120,
            memory_release_ms: 1000,
            batch_max: 128,
            batch_linger_ms: 1,
            batch_workers: 4,
            local_tx_timeout_ms: 5_000,
            cas_retries: 16,
            local_sold_out_ttl_ms: 500,
            sold_out_poll_ms: 50,
            promo_cache_ttl_ms: 1_000,
            item_cache_capacity: 10_000,
            item_cache_local_ttl_ms: 1_000,
            item_cache_shared_ttl_secs: 60,
            item_cache_negative_ttl_ms: 5_000,
            item_cache_double_delete_ms: 500,
            item_live_stock_ttl_ms: 100,
            heartbeat_interval_ms: 1_000,
            tx_check_after_ms: 3_000,
            tx_check_interval_ms: 1_000,
            tx_check_max: 15,
            reconcile_after_secs: 60,
            reconcile_interval_secs: 10,
            ledger_sweep_after_end_secs: 3_600,
            ledger_sweep_max_records: 10_000,
            order_payment_timeout_secs: 15 * 60,
            ledger_rebuild_quiet_ms: 6_000,
            request_timeout_ms: 15_000,
            held_order_grace_ms: 15_000,
            max_body_bytes: 16 * 1024,
            admin_max_body_bytes: 2 * 1024 * 1024,
            bulk_users_max: 20_000,
            bulk_users_timeout_ms: 300_000,
            item_list_page_max: 500,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            password_hashes_max_in_flight: 4,
            password_hashes_max_waiting: 64,
            demo: false,
        }
    }
}

/// The database chosen by `database_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseBackend {
    Sqlite(String),
    Mysql(String),
}

/// A settings error, worded for the person starting the server.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The `SECKILL_*` variables that name a setting, as text: a text setting
/// stays the text it is (`SECKILL_REDIS_PREFIX=2024`, a token of digits),
/// a number or a switch is read from it at extraction. Other variables
/// with the prefix are tools' (SECKILL_CONFIG, SECKILL_TEST_*, scripts'
/// own) and left alone; a typo in a file is still refused
/// (deny_unknown_fields). Empty is unset: an optional setting none (as
/// API.md's "unset"), any other its file's or default value. A figment
/// provider of its own, so that a refusal names the variable.
struct EnvSettings(figment::value::Dict);

impl EnvSettings {
    fn read(
        vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> Result<EnvSettings, ConfigError> {
        use figment::value::{Empty, Value};
        let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
        let mut settings = figment::value::Dict::new();
        for (name, raw) in vars {
            let Some(key) = name.to_str().and_then(|n| {
                n.get(..8)
                    .filter(|p| p.eq_ignore_ascii_case("SECKILL_"))
                    .map(|_| n[8..].to_ascii_lowercase())
            }) else {
                continue;
            };
            let Some(default) = defaults.get(&key) else {
                continue;
            };
            let Some(raw) = raw.to_str() else {
                return Err(ConfigError(format!(
                    "SECKILL_{} is not UTF-8 text",
                    key.to_ascii_uppercase()
                )));
            };
            if raw.trim().is_empty() {
                if default.is_null() {
                    settings.insert(key, Value::from(Empty::None));
                }
                continue;
            }
            settings.insert(key, Value::from(raw.trim().to_owned()));
        }
        Ok(EnvSettings(settings))
    }
}

impl figment::Provider for EnvSettings {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
            .interpolater(|_, keys| format!("SECKILL_{}", keys.join(".").to_ascii_uppercase()))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.0.clone()))
    }
}

impl Config {
    /// Defaults, then `file` (when given), then `SECKILL_*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(EnvSettings::read(std::env::vars_os())?);
        // Lossy: a number or a switch is read from its text (the variables
        // come as text, whatever they look like).
        let mut config: Config = fig
            .extract_lossy()
            .map_err(|e| ConfigError(format!("bad setting: {e}")))?;
        config.unset_empty();
        Ok(config)
    }

    /// An optional setting given empty (`SECKILL_REDIS_URL=` in a compose
    /// file, `redis_url = ""`) is unset, as API.md's "unset" means: Redis
    /// in memory, the admin API closed, no webhook.
    pub fn unset_empty(&mut self) {
        for s in [
            &mut self.redis_url,
            &mut self.rocketmq_namesrv,
            &mut self.otp_webhook_url,
            &mut self.client_ip_header,
        ] {
            if s.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *s = None;
            }
        }
        // A secret is compared with what a request sends, trimmed.
        for s in [&mut self.admin_token, &mut self.otp_webhook_token] {
            if let Some(v) = s {
                v.0 = v.0.trim().to_string();
            }
            if s.as_ref().is_some_and(|v| v.0.is_empty()) {
                *s = None;
            }
        }
    }

    /// How long past the request deadline an order already in its local
    /// transaction is waited for (`http::deadline`).
    pub fn held_order_grace(&self) -> Duration {
        Duration::from_millis(self.held_order_grace_ms)
    }

    /// Checks every setting and derives the typed ones.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.database()?;
        if let Some(r) = &self.redis_url {
            if !(r.starts_with("redis://") || r.starts_with("rediss://")) {
                return Err(ConfigError(format!(
                    "SECKILL_REDIS_URL must start with redis:// or rediss:// (got {:?})",
                    redact(r)
                )));
            }
        }
        if let Some(u) = &self.otp_webhook_url {
            if !(u.starts_with("http://") || u.starts_with("https://"))
                || reqwest::Url::parse(u).is_err()
            {
                return Err(ConfigError(format!(
                    "SECKILL_OTP_WEBHOOK_URL must be an http:// or https:// URL (got {:?})",
                    redact(u)
                )));
            }
        }
        if let Some(t) = &self.admin_token {
            if t.0.chars().count() < 16 {
                return Err(ConfigError(
                    "SECKILL_ADMIN_TOKEN must be at least 16 characters (or unset to close the admin API)".into(),
                ));
            }
        }
        for o in self.cors_origin_list() {
            if o == "*" {
                return Err(ConfigError(
                    "SECKILL_CORS_ORIGINS cannot be * : credentialed CORS needs explicit origins"
                        .into(),
                ));
            }
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(ConfigError(format!(
                    "SECKILL_CORS_ORIGINS entry {o:?} must look like https://host[:port] with no trailing slash"
                )));
            }
            if axum::http::HeaderValue::from_str(&o).is_err() {
                return Err(ConfigError(format!(
                    "SECKILL_CORS_ORIGINS entry {o:?} is not a valid origin"
                )));
            }
        }
        if let Some(ns) = &self.rocketmq_namesrv {
            let ok = ns.split(';').all(|a| {
                let a = a.trim();
                a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            });
            if !ok {
                return Err(ConfigError(format!(
                    "SECKILL_ROCKETMQ_NAMESRV must be host:port[;host:port] (got {ns:?})"
                )));
            }
        }
        if self.http_idle_timeout_secs > 86_400 {
            return Err(ConfigError(
                "SECKILL_HTTP_IDLE_TIMEOUT_SECS must be at most 86400 (0: never)".into(),
            ));
        }
        if !(1_000..=25_000).contains(&self.rocketmq_listener_deadline_ms) {
            return Err(ConfigError(
                "SECKILL_ROCKETMQ_LISTENER_DEADLINE_MS must be 1000..=25000 (the client gives up at 30 s)".into(),
            ));
        }
        if !(1_000..=3_600_000).contains(&self.node_lease_ttl_ms)
            || self.node_lease_ttl_ms < self.redis_timeout_ms.saturating_mul(3)
        {
            return Err(ConfigError(format!(
                "SECKILL_NODE_LEASE_TTL_MS must be 1000..=3600000 and at least three times \
                 SECKILL_REDIS_TIMEOUT_MS ({}), so one slow renewal does not stop orders (got {})",
                self.redis_timeout_ms, self.node_lease_ttl_ms
            )));
        }
        if let Some(n) = self.node_id {
            if n > crate::domain::ids::MAX_NODE_ID {
                return Err(ConfigError(format!(
                    "SECKILL_NODE_ID must be 0..=1023 (got {n})"
                )));
            }
        }
        let positive: [(&str, u64); 33] = [
            ("SECKILL_SHUTDOWN_TIMEOUT_SECS", self.shutdown_timeout_secs),
            (
                "SECKILL_DATABASE_MAX_CONNECTIONS",
                self.database_max_connections.into(),
            ),
            ("SECKILL_CAS_RETRIES", self.cas_retries.into()),
            ("SECKILL_HTTP_BACKLOG", self.http_backlog.into()),
            (
                "SECKILL_HEALTH_CHECK_TIMEOUT_MS",
                self.health_check_timeout_ms,
            ),
            (
                "SECKILL_ORDER_PAYMENT_TIMEOUT_SECS",
                self.order_payment_timeout_secs,
            ),
            ("SECKILL_REQUEST_TIMEOUT_MS", self.request_timeout_ms),
            (
                "SECKILL_RECONCILE_INTERVAL_SECS",
                self.reconcile_interval_secs,
            ),
            ("SECKILL_SESSION_TTL_SECS", self.session_ttl_secs),
            ("SECKILL_OTP_TTL_SECS", self.otp_ttl_secs),
            (
                "SECKILL_OTP_WEBHOOK_TIMEOUT_MS",
                self.otp_webhook_timeout_ms,
            ),
            ("SECKILL_CAPTCHA_TTL_SECS", self.captcha_ttl_secs),
            (
                "SECKILL_CAPTCHA_PER_USER_PER_MINUTE",
                self.captcha_per_user_per_minute.into(),
            ),
            (
                "SECKILL_CAPTCHA_MAX_IN_FLIGHT",
                self.captcha_max_in_flight.into(),
            ),
            (
                "SECKILL_PASSWORD_HASHES_MAX_IN_FLIGHT",
                self.password_hashes_max_in_flight.into(),
            ),
            (
                "SECKILL_SECKILL_TOKEN_TTL_SECS",
                self.seckill_token_ttl_secs,
            ),
            ("SECKILL_GATE_FACTOR", self.gate_factor.into()),
            ("SECKILL_ORDER_RATE_PER_SEC", self.order_rate_per_sec.into()),
            ("SECKILL_TOKEN_RATE_PER_SEC", self.token_rate_per_sec.into()),
            ("SECKILL_BUYER_RATE_PER_SEC", self.buyer_rate_per_sec.into()),
            (
                "SECKILL_ORDER_QUEUE_CAPACITY",
                self.order_queue_capacity as u64,
            ),
            ("SECKILL_BATCH_MAX", self.batch_max as u64),
            ("SECKILL_BATCH_WORKERS", self.batch_workers as u64),
            ("SECKILL_LOCAL_TX_TIMEOUT_MS", self.local_tx_timeout_ms),
            ("SECKILL_ITEM_CACHE_CAPACITY", self.item_cache_capacity),
            (
                "SECKILL_ITEM_CACHE_LOCAL_TTL_MS",
                self.item_cache_local_ttl_ms,
            ),
            (
                "SECKILL_ITEM_CACHE_SHARED_TTL_SECS",
                self.item_cache_shared_ttl_secs,
            ),
            (
                "SECKILL_ITEM_CACHE_NEGATIVE_TTL_MS",
                self.item_cache_negative_ttl_ms,
            ),
            (
                "SECKILL_ITEM_CACHE_DOUBLE_DELETE_MS",
                self.item_cache_double_delete_ms,
            ),
            ("SECKILL_MAX_BODY_BYTES", self.max_body_bytes as u64),
            (
                "SECKILL_ADMIN_MAX_BODY_BYTES",
                self.admin_max_body_bytes as u64,
            ),
            (
                "SECKILL_ITEM_LIST_PAGE_MAX",
                u64::from(self.item_list_page_max),
            ),
            (
                "SECKILL_LEDGER_SWEEP_MAX_RECORDS",
                self.ledger_sweep_max_records as u64,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError(format!("{name} must be greater than 0")));
            }
        }
        self.check_bounds()?;
        if !(1..=1000).contains(&self.per_user_limit) {
            return Err(ConfigError(
                "SECKILL_PER_USER_LIMIT must be 1..=1000".into(),
            ));
        }
        // Drawings run on the runtime's blocking threads (512): more places
        // than a fraction of them would queue there again.
        if self.captcha_max_in_flight > 256 {
            return Err(ConfigError(
                "SECKILL_CAPTCHA_MAX_IN_FLIGHT must be 1..=256".into(),
            ));
        }
        if self.ledger_rebuild_quiet_ms < self.local_tx_timeout_ms {
            return Err(ConfigError(
                "SECKILL_LEDGER_REBUILD_QUIET_MS must be at least SECKILL_LOCAL_TX_TIMEOUT_MS \
                 (a rebuild must not start while an order in flight at the loss may still commit)"
                    .into(),
            ));
        }
        if self.held_order_grace_ms < self.local_tx_timeout_ms || self.held_order_grace_ms > 600_000
        {
            return Err(ConfigError(format!(
                "SECKILL_HELD_ORDER_GRACE_MS ({}) must be at least SECKILL_LOCAL_TX_TIMEOUT_MS ({}) \
                 (an order in its local transaction, or another request's started write, is waited for at least that long) and at most 600000",
                self.held_order_grace_ms, self.local_tx_timeout_ms
            )));
        }
        if self.shutdown_timeout_secs.saturating_mul(1000) < self.request_timeout_ms {
            return Err(ConfigError(format!(
                "SECKILL_SHUTDOWN_TIMEOUT_SECS ({} s) must be at least SECKILL_REQUEST_TIMEOUT_MS ({} ms): \
                 a request in flight at SIGTERM gets its whole deadline",
                self.shutdown_timeout_secs, self.request_timeout_ms
            )));
        }
        if self.local_tx_timeout_ms >= self.rocketmq_listener_deadline_ms {
            return Err(ConfigError(format!(
                "SECKILL_LOCAL_TX_TIMEOUT_MS ({}) must be below SECKILL_ROCKETMQ_LISTENER_DEADLINE_MS ({}): \
                 the local transaction runs inside the broker client's listener call, which answers \"unknown\" past its deadline",
                self.local_tx_timeout_ms, self.rocketmq_listener_deadline_ms
            )));
        }
        if self.bulk_users_timeout_ms < self.request_timeout_ms
            || self.bulk_users_timeout_ms > 3_600_000
        {
            return Err(ConfigError(format!(
                "SECKILL_BULK_USERS_TIMEOUT_MS ({}) must be at least SECKILL_REQUEST_TIMEOUT_MS ({}) and at most 3600000",
                self.bulk_users_timeout_ms, self.request_timeout_ms
            )));
        }
        if self.request_timeout_ms <= self.local_tx_timeout_ms {
            return Err(ConfigError(
                "SECKILL_REQUEST_TIMEOUT_MS must be above SECKILL_LOCAL_TX_TIMEOUT_MS \
                 (an order's answer includes its local transaction)"
                    .into(),
            ));
        }
        if self.item_list_page_max > 10_000 {
            return Err(ConfigError(
                "SECKILL_ITEM_LIST_PAGE_MAX must be at most 10000 (a page's promos are read with one placeholder an item)".into(),
            ));
        }
        if self.batch_max > 1000 {
            return Err(ConfigError("SECKILL_BATCH_MAX must be at most 1000".into()));
        }
        // A wait of none is no wait, one above an hour no bound (and
        // SQLite's busy time-out must fit its C int).
        for (name, v) in [
            (
                "SECKILL_DATABASE_ACQUIRE_TIMEOUT_MS",
                self.database_acquire_timeout_ms,
            ),
            (
                "SECKILL_SQLITE_BUSY_TIMEOUT_MS",
                self.sqlite_busy_timeout_ms,
            ),
            ("SECKILL_REDIS_TIMEOUT_MS", self.redis_timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&v) {
                return Err(ConfigError(format!(
                    "{name} must be 1..=3600000 (at most an hour)"
                )));
            }
        }
        if self.database_deadlock_retries > 20 {
            return Err(ConfigError(
                "SECKILL_DATABASE_DEADLOCK_RETRIES must be at most 20 (a deadlock that comes back \
                 twenty times is not a race: the writes lock rows in opposite orders)"
                    .into(),
            ));
        }
        if self.sqlite_max_connections == 0 || self.sqlite_cache_kib < 64 {
            return Err(ConfigError(
                "SECKILL_SQLITE_MAX_CONNECTIONS must be ≥ 1 and SECKILL_SQLITE_CACHE_KIB ≥ 64"
                    .into(),
            ));
        }
        // Every hash takes this much memory and time on a blocking thread:
        // past 1 GiB or 64 passes a login is no longer an answer.
        if !(8..=1_048_576).contains(&self.argon2_memory_kib)
            || !(1..=64).contains(&self.argon2_iterations)
            || argon2::Params::new(self.argon2_memory_kib, self.argon2_iterations, 1, None).is_err()
        {
            return Err(ConfigError(
                "SECKILL_ARGON2_MEMORY_KIB must be 8..=1048576 and SECKILL_ARGON2_ITERATIONS 1..=64"
                    .into(),
            ));
        }
        // The per-phone limits guard passwords and codes; they cannot be
        // turned off (the per-address ones can: 0).
        for (name, v) in [
            (
                "SECKILL_LOGIN_ATTEMPTS_PER_PHONE_PER_MINUTE",
                self.login_attempts_per_phone_per_minute,
            ),
            (
                "SECKILL_OTP_PER_PHONE_PER_HOUR",
                self.otp_per_phone_per_hour,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError(format!(
                    "{name} must be greater than 0 (the per-phone limits cannot be turned off)"
                )));
            }
        }
        if self.session_cache_ttl_ms > 60_000 {
            return Err(ConfigError(
                "SECKILL_SESSION_CACHE_TTL_MS must be at most 60000 \
                 (a logged-out session stays usable on an instance that missed the broadcast this long)"
                    .into(),
            ));
        }
        if matches!(self.database()?, DatabaseBackend::Mysql(_)) && self.redis_url.is_none() {
            return Err(ConfigError(
                "a shared MySQL database means several instances: set SECKILL_REDIS_URL too \
                 (in-memory stock, sessions and tokens would differ per instance)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Settings accepted but unwise, each as a sentence for the start-up
    /// log (tests and drills use some of them on purpose).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let batch_lifetime_ms =
            self.local_tx_timeout_ms
                .saturating_add(if self.rocketmq_namesrv.is_some() {
                    self.rocketmq_send_timeout_ms
                } else {
                    0
                });
        if self.reconcile_after_secs.saturating_mul(1000) < batch_lifetime_ms {
            out.push(format!(
                "SECKILL_RECONCILE_AFTER_SECS ({} s) is below a batch's own life ({batch_lifetime_ms} ms: \
                 SECKILL_LOCAL_TX_TIMEOUT_MS, plus SECKILL_ROCKETMQ_SEND_TIMEOUT_MS with a broker): the \
                 reconciler may settle the journal rows of batches still under way, whose orders then fail \
                 (503, nothing sold twice)",
                self.reconcile_after_secs
            ));
        }
        if self.held_order_grace_ms < batch_lifetime_ms {
            out.push(format!(
                "SECKILL_HELD_ORDER_GRACE_MS ({}) is below a batch's own life ({batch_lifetime_ms} ms): \
                 an order held past the request deadline may be answered 503 \"outcome not known\" \
                 while its batch still commits",
                self.held_order_grace_ms
            ));
        }
        if self.captcha_enabled && self.captcha_log_answers {
            out.push(
                "SECKILL_CAPTCHA_LOG_ANSWERS is on: every captcha's answer is logged \
                 (automated tests only: anyone who reads the log passes the captcha)"
                    .into(),
            );
        }
        out
    }

    /// The bounds every setting of a kind has: a duration of at most a
    /// year (a longer one is no bound, and some caches refuse it), the
    /// sizes of in-process queues and caches at most 16 M, and the periods
    /// too short to be one.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        const YEAR_SECS: u64 = 365 * 24 * 3600;
        let fields = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        for (key, value) in &fields {
            let Some(v) = value.as_u64() else { continue };
            let max = if key.ends_with("_ms") {
                YEAR_SECS * 1000
            } else if key.ends_with("_secs") {
                YEAR_SECS
            } else {
                continue;
            };
            if v > max {
                return Err(ConfigError(format!(
                    "SECKILL_{} must be at most {max} (a year)",
                    key.to_ascii_uppercase()
                )));
            }
        }
        const SIZE_MAX: u64 = 1 << 24;
        for (name, v) in [
            (
                "SECKILL_ORDER_QUEUE_CAPACITY",
                self.order_queue_capacity as u64,
            ),
            (
                "SECKILL_ORDER_PATH_MAX_IN_FLIGHT",
                self.order_path_max_in_flight as u64,
            ),
            ("SECKILL_BATCH_WORKERS", self.batch_workers as u64),
            ("SECKILL_ITEM_CACHE_CAPACITY", self.item_cache_capacity),
            (
                "SECKILL_SESSION_CACHE_CAPACITY",
                self.session_cache_capacity,
            ),
            ("SECKILL_BULK_USERS_MAX", self.bulk_users_max as u64),
            (
                "SECKILL_PASSWORD_HASHES_MAX_WAITING",
                self.password_hashes_max_waiting.into(),
            ),
            (
                "SECKILL_LEDGER_SWEEP_MAX_RECORDS",
                self.ledger_sweep_max_records as u64,
            ),
        ] {
            if v > SIZE_MAX {
                return Err(ConfigError(format!("{name} must be at most {SIZE_MAX}")));
            }
        }
        for (name, v, min) in [
            (
                "SECKILL_HEARTBEAT_INTERVAL_MS",
                self.heartbeat_interval_ms,
                100,
            ),
            (
                "SECKILL_TX_CHECK_INTERVAL_MS",
                self.tx_check_interval_ms,
                10,
            ),
        ] {
            if v < min {
                return Err(ConfigError(format!("{name} must be at least {min}")));
            }
        }
        for (name, v) in [
            ("SECKILL_MAX_BODY_BYTES", self.max_body_bytes),
            ("SECKILL_ADMIN_MAX_BODY_BYTES", self.admin_max_body_bytes),
        ] {
            if v > 1 << 30 {
                return Err(ConfigError(format!(
                    "{name} must be at most 1073741824 (1 GiB)"
                )));
            }
        }
        if !(100..=30_000).contains(&self.rocketmq_send_timeout_ms) {
            return Err(ConfigError(
                "SECKILL_ROCKETMQ_SEND_TIMEOUT_MS must be 100..=30000".into(),
            ));
        }
        if self.rocketmq_start_timeout_ms > 600_000 {
            return Err(ConfigError(
                "SECKILL_ROCKETMQ_START_TIMEOUT_MS must be at most 600000 (ten minutes)".into(),
            ));
        }
        Ok(())
    }

    /// The address to listen on: `ip:port`, or `host:port` with a name the
    /// system resolves (`localhost:8080`; its IPv4 address first).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        if let Ok(addr) = self.http_addr.parse() {
            return Ok(addr);
        }
        let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&self.http_addr)
            .map(Iterator::collect)
            .unwrap_or_default();
        resolved
            .iter()
            .find(|a| a.is_ipv4())
            .or(resolved.first())
            .copied()
            .ok_or_else(|| {
                ConfigError(format!(
                    "SECKILL_HTTP_ADDR must be host:port like 127.0.0.1:8080 or localhost:8080 (got {:?})",
                    self.http_addr
                ))
            })
    }

    pub fn database(&self) -> Result<DatabaseBackend, ConfigError> {
        let url = &self.database_url;
        if url.starts_with("sqlite:") {
            Ok(DatabaseBackend::Sqlite(url.clone()))
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Ok(DatabaseBackend::Mysql(url.replacen(
                "mariadb://",
                "mysql://",
                1,
            )))
        } else {
            Err(ConfigError(format!(
                "SECKILL_DATABASE_URL must start with sqlite:// or mysql:// (got {:?})",
                redact(url)
            )))
        }
    }

    pub fn cors_origin_list(&self) -> Vec<String> {
        self.cors_origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn secs(v: u64) -> Duration {
        Duration::from_secs(v)
    }

    pub fn millis(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

/// A URL without its password, for logs and error messages.
pub fn redact(url: &str) -> String {
    // The last `@` anywhere, not only in the authority: a password with an
    // unescaped `/` or `?` stays hidden (a `@` in a path or query makes the
    // shown URL odd, never a leak).
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_embedded() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(
            c.database().unwrap(),
            DatabaseBackend::Sqlite("sqlite://data/seckill.db".into())
        );
        assert_eq!(c.order_strategy, OrderStrategy::WriteBehind);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn environment_overrides_file_which_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "http_addr = \"127.0.0.1:9000\"\ngate_factor = 7\n",
            )?;
            jail.set_env("SECKILL_GATE_FACTOR", "9");
            jail.set_env("SECKILL_ORDER_STRATEGY", "db-lock");
            jail.set_env("SECKILL_CAPTCHA_ENABLED", "false");
            jail.set_env("SECKILL_ADMIN_TOKEN", "0123456789abcdef");
            jail.set_env("SECKILL_TEST_SOMETHING", "ignored: not a setting");
            let c = Config::load(Some(std::path::Path::new("s.toml"))).unwrap();
            assert_eq!(c.http_addr, "127.0.0.1:9000");
            assert_eq!(c.gate_factor, 9);
            assert_eq!(c.order_strategy, OrderStrategy::DbLock);
            assert!(!c.captcha_enabled);
            assert!(!format!("{c:?}").contains("0123456789abcdef"));
            // A token of digits only stays the text it is.
            jail.set_env("SECKILL_ADMIN_TOKEN", "0012345678901234567890");
            let c = Config::load(None).unwrap();
            assert_eq!(c.admin_token, Some(Secret("0012345678901234567890".into())));
            // So does any text setting; numbers and switches are read from text.
            jail.set_env("SECKILL_REDIS_PREFIX", "2024");
            jail.set_env("SECKILL_CAPTCHA_ENABLED", "on ");
            jail.set_env("SECKILL_ORDER_STRATEGY", " db-optimistic");
            jail.set_env("SECKILL_ADMIN_TOKEN", " tok-with-spaces ");
            let c = Config::load(None).unwrap();
            assert_eq!(c.redis_prefix, "2024");
            assert!(c.captcha_enabled);
            assert_eq!(c.order_strategy, OrderStrategy::DbOptimistic);
            assert_eq!(c.admin_token, Some(Secret("tok-with-spaces".into())));
            jail.set_env("SECKILL_CAPTCHA_ENABLED", "0");
            assert!(!Config::load(None).unwrap().captcha_enabled);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn an_optional_setting_given_empty_is_unset() {
        figment::Jail::expect_with(|jail| {
            for key in [
                "SECKILL_REDIS_URL",
                "SECKILL_ROCKETMQ_NAMESRV",
                "SECKILL_ADMIN_TOKEN",
                "SECKILL_OTP_WEBHOOK_URL",
                "SECKILL_OTP_WEBHOOK_TOKEN",
                "SECKILL_CLIENT_IP_HEADER",
                "SECKILL_NODE_ID",
                // Not optional: empty keeps the default.
                "SECKILL_GATE_FACTOR",
                "SECKILL_HTTP_ADDR",
            ] {
                jail.set_env(key, "");
            }
            let c = Config::load(None).unwrap();
            assert_eq!(
                (
                    &c.redis_url,
                    &c.rocketmq_namesrv,
                    &c.otp_webhook_url,
                    &c.client_ip_header
                ),
                (&None, &None, &None, &None)
            );
            assert!(c.admin_token.is_none() && c.otp_webhook_token.is_none());
            assert_eq!(c.node_id, None);
            assert_eq!(
                (c.gate_factor, c.http_addr.as_str()),
                (Config::default().gate_factor, "127.0.0.1:8080")
            );
            c.validate().unwrap();
            // Empty in the environment unsets what a file set.
            jail.create_file(
                "s.toml",
                "node_id = 7\nredis_url = \"redis://h/\"\ngate_factor = 9",
            )?;
            let c = Config::load(Some(std::path::Path::new("s.toml"))).unwrap();
            assert_eq!((c.node_id, c.redis_url), (None, None));
            // … and keeps a file's value of any other.
            assert_eq!(c.gate_factor, 9);
            // A refusal names the variable.
            jail.set_env("SECKILL_GATE_FACTOR", "many");
            let e = Config::load(None).unwrap_err().0;
            assert!(e.contains("SECKILL_GATE_FACTOR"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_listen_address_may_name_a_host() {
        let at = |a: &str| Config {
            http_addr: a.into(),
            ..Config::default()
        };
        assert_eq!(
            at("localhost:8080").listen_addr().unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(at("[::1]:8080").listen_addr().unwrap().port(), 8080);
        for bad in ["localhost", "8080", "localhost:99999", ""] {
            assert!(at(bad).listen_addr().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_settings_are_refused_with_a_sentence() {
        let bad = [
            Config {
                database_url: "postgres://x".into(),
                ..Config::default()
            },
            Config {
                held_order_grace_ms: 4_999,
                ..Config::default()
            },
            Config {
                held_order_grace_ms: 600_001,
                ..Config::default()
            },
            Config {
                node_lease_ttl_ms: 999,
                ..Config::default()
            },
            Config {
                node_lease_ttl_ms: 5_000,
                redis_timeout_ms: 2_000,
                ..Config::default()
            },
            Config {
                http_addr: "nope".into(),
                ..Config::default()
            },
            Config {
                cors_origins: "*".into(),
                ..Config::default()
            },
            Config {
                gate_factor: 0,
                ..Config::default()
            },
            Config {
                database_url: "mysql://root@127.0.0.1/test".into(),
                ..Config::default()
            },
            Config {
                admin_token: Some(Secret("short".into())),
                ..Config::default()
            },
            Config {
                sqlite_max_connections: 0,
                ..Config::default()
            },
            Config {
                sqlite_cache_kib: 16,
                ..Config::default()
            },
            Config {
                sqlite_busy_timeout_ms: 0,
                ..Config::default()
            },
            Config {
                sqlite_busy_timeout_ms: u64::from(u32::MAX),
                ..Config::default()
            },
            Config {
                database_acquire_timeout_ms: 3_600_001,
                ..Config::default()
            },
            Config {
                database_deadlock_retries: 21,
                ..Config::default()
            },
            Config {
                rocketmq_start_timeout_ms: 600_001,
                ..Config::default()
            },
            Config {
                redis_timeout_ms: 0,
                ..Config::default()
            },
        ];
        for c in bad {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("SECKILL_") || e.contains("bad"), "{e}");
        }
    }

    #[test]
    fn each_bound_names_its_setting() {
        let cases: [(&str, Config); 12] = [
            (
                "SECKILL_BULK_USERS_TIMEOUT_MS",
                Config {
                    bulk_users_timeout_ms: 14_999,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_BULK_USERS_TIMEOUT_MS",
                Config {
                    bulk_users_timeout_ms: 3_600_001,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_SHUTDOWN_TIMEOUT_SECS",
                Config {
                    shutdown_timeout_secs: 14,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_SHUTDOWN_TIMEOUT_SECS",
                Config {
                    shutdown_timeout_secs: 0,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_LOCAL_TX_TIMEOUT_MS",
                Config {
                    local_tx_timeout_ms: 10_000,
                    ledger_rebuild_quiet_ms: 10_000,
                    request_timeout_ms: 20_000,
                    shutdown_timeout_secs: 20,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_PROMO_CACHE_TTL_MS",
                Config {
                    promo_cache_ttl_ms: u64::MAX,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_ITEM_CACHE_SHARED_TTL_SECS",
                Config {
                    item_cache_shared_ttl_secs: 400 * 24 * 3600,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_ORDER_QUEUE_CAPACITY",
                Config {
                    order_queue_capacity: usize::MAX,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_DATABASE_MAX_CONNECTIONS",
                Config {
                    database_max_connections: 0,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_HEARTBEAT_INTERVAL_MS",
                Config {
                    heartbeat_interval_ms: 10,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_ROCKETMQ_SEND_TIMEOUT_MS",
                Config {
                    rocketmq_send_timeout_ms: 0,
                    ..Config::default()
                },
            ),
            (
                "SECKILL_HEALTH_CHECK_TIMEOUT_MS",
                Config {
                    health_check_timeout_ms: 0,
                    ..Config::default()
                },
            ),
        ];
        for (name, c) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(name), "{name}: {e}");
        }
        // Exactly at the bounds: accepted.
        Config {
            shutdown_timeout_secs: 15,
            heartbeat_interval_ms: 100,
            bulk_users_timeout_ms: 15_000,
            ..Config::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn a_reconciler_quicker_than_a_batch_is_warned_of() {
        assert!(Config::default().warnings().is_empty());
        let quick = Config {
            reconcile_after_secs: 5,
            ..Config::default()
        };
        assert!(
            quick.warnings().is_empty(),
            "5 s ≥ the 5 s local transaction"
        );
        let with_broker = Config {
            rocketmq_namesrv: Some("127.0.0.1:9876".into()),
            ..quick
        };
        let w = with_broker.warnings();
        assert!(
            w.len() == 1 && w[0].starts_with("SECKILL_RECONCILE_AFTER_SECS"),
            "{w:?}"
        );
    }

    #[test]
    fn passwords_in_urls_stay_out_of_messages() {
        assert_eq!(
            redact("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(redact("mysql://app:pw@db/shop"), "mysql://app:***@db/shop");
        assert_eq!(redact("mysql://root@db/shop"), "mysql://root@db/shop");
        assert_eq!(
            redact("mysql://app:p/ss@db/shop"),
            "mysql://app:***@db/shop"
        );
        for c in [
            Config {
                database_url: "postgres://app:pw@db/x".into(),
                ..Config::default()
            },
            Config {
                redis_url: Some("http://:pw@cache".into()),
                ..Config::default()
            },
            Config {
                otp_webhook_url: Some("ftp://u:pw@sms".into()),
                ..Config::default()
            },
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("***") && !e.contains("pw"), "{e}");
        }
    }

    #[test]
    fn cors_origins_are_split_on_commas() {
        let c = Config {
            cors_origins: "http://a.test, https://b.test:8443".into(),
            ..Config::default()
        };
        c.validate().unwrap();
        assert_eq!(
            c.cors_origin_list(),
            vec!["http://a.test", "https://b.test:8443"]
        );
    }
}
