//! Fault drills: a paced crowd buys through nginx while one part of the
//! stack fails in the middle of the sale — an app instance killed, Redis
//! restarted empty, the broker killed, MariaDB stopped — and the sale is
//! then checked against MariaDB directly: no oversell, no order a buyer was
//! told about lost, every reservation an order or given back, the sale sold
//! out, and no answer a client must not see (a 5xx other than 503, or none
//! within the request deadline).
//!
//! Each drill prints one `FAULT_DRILL {json}` line to the process's stderr
//! (past the harness' capture, so a passing run's log has it too) and
//! appends it to `<cluster dir>/logs/fault-drills.jsonl`; docs/RELIABILITY.md
//! quotes these figures.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{json, Value};
use sqlx::Row as _;

use crate::{cluster, cluster_script, http_json, mysql, scalar, Cluster, ADMIN, SERIAL};

/// Units for sale; the buyers are twice as many, so it sells out.
const STOCK: i64 = 600;
const BUYERS: usize = 2 * STOCK as usize;
/// Clients at once (each one buyer at a time, over one shared pool).
const CONCURRENCY: usize = 40;
/// Buyers let in per second at most: the sale then lasts about 6 s and the
/// buyers about 12 s (plus the fault's stall), long enough for the fault to
/// land mid-sale and for reservations the fault strands to be given back
/// (the reconciler settles them after 5 s) while buyers still arrive.
const BUYERS_PER_SEC: u64 = 100;
/// The instances' request deadline (`SECKILL_REQUEST_TIMEOUT_MS` in main.rs)
/// and its grace for an order already in its local transaction
/// (`SECKILL_HELD_ORDER_GRACE_MS`); no answer within both plus a margin is a
/// hang.
const REQUEST_DEADLINE: Duration = Duration::from_secs(8);
const HELD_ORDER_GRACE: Duration = Duration::from_secs(9);
const CLIENT_TIMEOUT: Duration =
    Duration::from_secs(REQUEST_DEADLINE.as_secs() + HELD_ORDER_GRACE.as_secs() + 4);
/// A buyer without a final answer by then gives up (a violation).
const BUYER_DEADLINE: Duration = Duration::from_secs(120);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "fault-drill-password";
// A buyer's number has 4 digits for its index.
const _: () = assert!(BUYERS <= 10_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_instance_killed_mid_sale_loses_no_order() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    drill(&c, Fault::KillInstance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_instance_stopped_gracefully_mid_sale_loses_no_order() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    drill(&c, Fault::TermInstance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_mid_sale_rebuilds_the_ledger() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    drill(&c, Fault::RestartRedisEmpty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_killed_and_restarted_mid_sale_loses_no_order() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    drill(&c, Fault::KillBroker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_stopped_for_seconds_mid_sale_loses_no_order() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    drill(&c, Fault::StopMariadb).await;
}

/// One drill: a sale, the crowd with the fault injected once a quarter of
/// the stock is sold, settling, the checks; the figures are published
/// before anything is asserted.
async fn drill(c: &Cluster, fault: Fault) {
    let _restore = RestoreOnPanic { fault, c };
    let api = Api::new(&c.front);
    let sale = set_up_sale(c, &api, fault).await;
    let crowd = Crowd::new(api.clone(), &sale);
    let (secs, window) = tokio::join!(crowd.clone().run(), inject_mid_sale(c, &crowd, fault));
    let report = check(c, &crowd, &sale, fault, secs, window).await;
    publish(&report.figures);
    assert!(
        report.failures.is_empty(),
        "{}: {}\n{}",
        fault.drill(),
        report.failures.join("; "),
        report.figures
    );
}

// ---------------------------------------------------------------- faults

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9` the first instance, 3 s later `scripts/cluster
    /// restart-instance` (a supervisor's restart).
    KillInstance,
    /// SIGTERM to the first instance (a deploy): it must stop taking
    /// orders, finish those admitted and exit within its shutdown bound;
    /// 1 s later it is started again.
    TermInstance,
    /// `SHUTDOWN NOSAVE`, 1 s later started again, empty.
    RestartRedisEmpty,
    /// `kill -9` the broker, 3 s later `scripts/rocketmq up`.
    KillBroker,
    /// `mysqladmin shutdown`, 5 s later started again.
    StopMariadb,
}

impl Fault {
    fn drill(self) -> &'static str {
        match self {
            Fault::KillInstance => "an_app_instance_killed_mid_sale_loses_no_order",
            Fault::TermInstance => "an_app_instance_stopped_gracefully_mid_sale_loses_no_order",
            Fault::RestartRedisEmpty => "redis_restarted_empty_mid_sale_rebuilds_the_ledger",
            Fault::KillBroker => "the_broker_killed_and_restarted_mid_sale_loses_no_order",
            Fault::StopMariadb => "mariadb_stopped_for_seconds_mid_sale_loses_no_order",
        }
    }

    /// The drill's digit in its buyers' phone numbers (unique per test).
    fn phone_digit(self) -> u8 {
        match self {
            Fault::KillInstance => 1,
            Fault::RestartRedisEmpty => 2,
            Fault::KillBroker => 3,
            Fault::StopMariadb => 4,
            Fault::TermInstance => 5,
        }
    }

    /// Breaks the component and brings it back; returns once it is back.
    async fn inject(self, c: &Cluster) {
        match self {
            Fault::KillInstance => {
                kill_9(&victim_pid_file(c)).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Fault::TermInstance => {
                let took = terminate(&victim_pid_file(c), SHUTDOWN_BOUND).await;
                eprintln!("{}: SIGTERM → exit in {took:?}", self.drill());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Fault::RestartRedisEmpty => {
                // Its exit code says nothing useful (the connection drops).
                let _ = quiet(
                    Command::new("redis-cli")
                        .args(REDIS)
                        .args(["shutdown", "nosave"]),
                )
                .status();
                wait_down("Redis", redis_answers).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Fault::KillBroker => {
                kill_9(&rmq_home().join("broker.pid")).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Fault::StopMariadb => {
                let status = quiet(Command::new("mysqladmin").args(MYSQL).arg("shutdown"))
                    .status()
                    .expect("mysqladmin runs");
                assert!(status.success(), "mysqladmin shutdown failed");
                wait_down("MariaDB", mariadb_answers).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
        let status = tokio::process::Command::from(self.bring_back(c))
            .status()
            .await
            .expect("the restart runs");
        assert!(status.success(), "{self:?}: bringing it back failed");
    }

    /// Starts the component again (the scripts start only what is down;
    /// `restart-instance` restarts a live instance too).
    fn bring_back(self, c: &Cluster) -> Command {
        let root = env!("CARGO_MANIFEST_DIR");
        match self {
            Fault::KillInstance | Fault::TermInstance => {
                cluster_script(&["restart-instance", victim_port(c)])
            }
            Fault::RestartRedisEmpty => {
                let mut cmd = Command::new(format!("{root}/scripts/services"));
                cmd.arg("redis");
                cmd
            }
            Fault::KillBroker => {
                let mut cmd = Command::new(format!("{root}/scripts/rocketmq"));
                cmd.arg("up").env("RMQ_HOME", rmq_home());
                cmd
            }
            Fault::StopMariadb => {
                let mut cmd = Command::new(format!("{root}/scripts/services"));
                cmd.arg("mariadb");
                cmd
            }
        }
    }
}

/// When a drill fails half-way, the component it broke is started again:
/// the tests after it need the whole cluster.
struct RestoreOnPanic<'a> {
    fault: Fault,
    c: &'a Cluster,
}

impl Drop for RestoreOnPanic<'_> {
    fn drop(&mut self) {
        let up = match self.fault {
            Fault::KillInstance | Fault::TermInstance => {
                std::fs::read_to_string(victim_pid_file(self.c))
                    .is_ok_and(|pid| running(pid.trim()))
            }
            _ => false,
        };
        if std::thread::panicking() && !up {
            eprintln!(
                "{}: failed; bringing {:?} back",
                self.fault.drill(),
                self.fault
            );
            let _ = self.fault.bring_back(self.c).status();
        }
    }
}

const REDIS: [&str; 4] = ["-h", "127.0.0.1", "-p", "6379"];
const MYSQL: [&str; 2] = ["-uroot", "-h127.0.0.1"];

fn redis_answers() -> bool {
    quiet(Command::new("redis-cli").args(REDIS).arg("ping"))
        .status()
        .is_ok_and(|s| s.success())
}

fn mariadb_answers() -> bool {
    quiet(Command::new("mysqladmin").args(MYSQL).arg("ping"))
        .status()
        .is_ok_and(|s| s.success())
}

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdout(Stdio::null()).stderr(Stdio::null())
}

async fn wait_down(what: &str, answers: fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers() {
        assert!(
            Instant::now() < deadline,
            "{what} still answers 30 s after its shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kill -9` the process of a pid file, wait until it is gone, and drop
/// the file: the scripts tell a live process by it, and a killed process
/// nobody reaps stays a zombie that `kill -0` still finds.
async fn kill_9(pid_file: &Path) {
    let pid =
        std::fs::read_to_string(pid_file).unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let pid = pid.trim();
    let status = Command::new("kill")
        .args(["-9", pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid} ({})", pid_file.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The instances' `shutdown_timeout_secs` (the default, 20 s) and a margin
/// for the last batches and the hand-over after it.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(25);

/// SIGTERM, then waits for the process to end; panics past `within`.
/// Returns how long it took.
async fn terminate(pid_file: &Path, within: Duration) -> Duration {
    let pid =
        std::fs::read_to_string(pid_file).unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let pid = pid.trim();
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", pid])
        .status()
        .expect("kill runs");
    assert!(
        status.success(),
        "kill -TERM {pid} ({})",
        pid_file.display()
    );
    while running(pid) {
        assert!(
            started.elapsed() < within,
            "the instance did not exit within {within:?} of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_file(pid_file);
    started.elapsed()
}

/// The process exists and is not a zombie.
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) S …": the state follows the last parenthesis.
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// `scripts/cluster`'s state directory.
fn cluster_dir() -> PathBuf {
    std::env::var_os("CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cluster"))
}

fn rmq_home() -> PathBuf {
    std::env::var_os("RMQ_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| cluster_dir().join("rocketmq"))
}

/// The instance killed: the first one.
fn victim_port(c: &Cluster) -> &str {
    c.instances[0].rsplit(':').next().expect("http://host:port")
}

fn victim_pid_file(c: &Cluster) -> PathBuf {
    cluster_dir().join(format!("seckill-{}.pid", victim_port(c)))
}

/// Once the crowd has sold a quarter of the stock: the fault, timed.
async fn inject_mid_sale(c: &Cluster, crowd: &Crowd, fault: Fault) -> Option<FaultWindow> {
    let sold_at_injection = loop {
        if crowd.done.load(Ordering::Acquire) {
            return None;
        }
        if let Some(sold) = crowd
            .api
            .stats(crowd.promo)
            .await
            .and_then(|s| s["sold"].as_i64())
        {
            if sold >= STOCK / 4 {
                break sold;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let start = Instant::now();
    fault.inject(c).await;
    Some(FaultWindow {
        sold_at_injection,
        start: crowd.secs(start),
        back: crowd.secs(Instant::now()),
    })
}

/// Seconds since the crowd started.
struct FaultWindow {
    sold_at_injection: i64,
    start: f64,
    back: f64,
}

// ------------------------------------------------------------------ sale

struct Sale {
    item: i64,
    promo: i64,
    phones: Vec<String>,
}

/// An item of `STOCK` units, a promo on it opening in 2 s, published, and
/// `BUYERS` accounts; returns when the promo opens.
async fn set_up_sale(c: &Cluster, api: &Api, fault: Fault) -> Sale {
    let post = |path: &str, body: Value| {
        let url = format!("{}{path}", c.front);
        async move { http_json(&api.http, reqwest::Method::POST, &url, ADMIN, Some(body)).await }
    };
    let (status, item) = post(
        "/api/v1/admin/items",
        json!({"title": format!("Fault drill {fault:?}"), "price_cents": 10_000, "stock": STOCK,
               "description": fault.drill(), "image_url": ""}),
    )
    .await;
    assert_eq!(status, 201, "{item}");
    let item = item["id"].as_i64().expect("item id");
    let start = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (status, promo) = post(
        "/api/v1/admin/promos",
        json!({"item_id": item, "name": format!("Fault drill {fault:?}"), "price_cents": 5_000,
               "start_at": start.to_rfc3339(), "end_at": (start + chrono::Duration::hours(1)).to_rfc3339()}),
    )
    .await;
    assert_eq!(status, 201, "{promo}");
    let promo = promo["id"].as_i64().expect("promo id");
    let (status, body) = post(&format!("/api/v1/admin/promos/{promo}/publish"), json!({})).await;
    assert_eq!(status, 200, "publish: {body}");

    // 11 digits: 1, 5, the drill's digit, 4 digits of the clock (a new
    // value every 10 s, a drill lasts longer), the buyer's 4.
    let clock = chrono::Utc::now().timestamp() / 10;
    let mut phones = Vec::new();
    for attempt in 0..10 {
        let salt = (clock + attempt) % 10_000;
        phones = (0..BUYERS)
            .map(|i| format!("15{}{salt:04}{i:04}", fault.phone_digit()))
            .collect();
        let users: Vec<Value> = phones
            .iter()
            .map(|p| json!({"phone": p, "name": "fault drill buyer", "password": PASSWORD}))
            .collect();
        let (status, body) = post("/api/v1/admin/users", json!({ "users": users })).await;
        match status {
            201 => break,
            // A run of another day used these numbers: the next ones.
            409 if attempt < 9 => continue,
            _ => panic!("creating the buyers: {status} {body}"),
        }
    }
    let wait = (start - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    Sale {
        item,
        promo,
        phones,
    }
}

// ------------------------------------------------------------------ HTTP

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

/// What one request got.
enum Reply {
    Answer {
        status: u16,
        /// The error body's `code`, when the body is one.
        code: Option<String>,
        body: Value,
    },
    NoAnswer {
        timed_out: bool,
    },
}

impl Reply {
    fn label(&self) -> String {
        match self {
            Reply::Answer { status, .. } if *status < 300 => status.to_string(),
            Reply::Answer {
                status,
                code: Some(code),
                ..
            } => format!("{status} {code}"),
            Reply::Answer { status, .. } => format!("{status} (no JSON error body)"),
            Reply::NoAnswer { timed_out: true } => "no answer (timeout)".into(),
            Reply::NoAnswer { timed_out: false } => "no answer (connection)".into(),
        }
    }

    /// An answer a client must never get, whatever broke.
    fn violation(&self) -> bool {
        match self {
            // nginx and the app both answer 503 with the JSON error body.
            Reply::Answer {
                status: 503, code, ..
            } => code.is_none(),
            Reply::Answer { status, .. } => *status >= 500,
            // A hang past the deadline.
            Reply::NoAnswer { timed_out } => *timed_out,
        }
    }
}

impl Api {
    fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(CONCURRENCY + 8)
            .tcp_nodelay(true)
            .build()
            .expect("an HTTP client");
        Api {
            http,
            base: base.to_owned(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(auth);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Reply::NoAnswer {
                    // nginx is local: a connect timeout is not a slow answer.
                    timed_out: e.is_timeout() && !e.is_connect(),
                };
            }
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(bytes) => {
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let code = body["code"].as_str().map(str::to_owned);
                Reply::Answer { status, code, body }
            }
            Err(e) => Reply::NoAnswer {
                timed_out: e.is_timeout(),
            },
        }
    }

    /// The promo's stats, when the deployment answers them.
    async fn stats(&self, promo: i64) -> Option<Value> {
        let path = format!("/api/v1/admin/promos/{promo}/stats");
        match self.send(reqwest::Method::GET, &path, ADMIN, None).await {
            Reply::Answer {
                status: 200, body, ..
            } => Some(body),
            _ => None,
        }
    }
}

// ----------------------------------------------------------------- crowd

/// One answer the crowd got.
struct Answer {
    /// Seconds since the crowd started.
    at: f64,
    endpoint: &'static str,
    label: String,
    violation: bool,
}

/// A buyer told "bought" (201).
struct Told {
    phone: String,
    session: String,
    order_no: String,
}

/// How a buyer ended.
enum Final {
    Bought,
    SoldOut,
    AlreadyBought,
    /// No final answer within `BUYER_DEADLINE`.
    GaveUp,
    /// An answer a client cannot act on.
    Unexpected(String),
}

impl Final {
    fn name(&self) -> &'static str {
        match self {
            Final::Bought => "bought",
            Final::SoldOut => "sold_out",
            Final::AlreadyBought => "already_bought",
            Final::GaveUp => "gave_up",
            Final::Unexpected(_) => "unexpected",
        }
    }
}

/// Where a buyer is.
enum Stage {
    LogIn,
    Token,
    Order,
}

/// What a buyer does after an answer that is not a 201.
enum Next {
    LogIn,
    NewToken,
    /// 429, or a promo not open yet: a short pause.
    Busy,
    /// 503, another 5xx, no answer: a pause, longer each time in a row.
    Unavailable,
    Stop(Final),
}

fn next_step(reply: &Reply) -> Next {
    match reply {
        Reply::NoAnswer { .. } => Next::Unavailable,
        Reply::Answer { status, code, .. } => match (*status, code.as_deref()) {
            (401, _) => Next::LogIn,
            (403, Some("INVALID_TOKEN")) => Next::NewToken,
            (409, Some("SOLD_OUT")) => Next::Stop(Final::SoldOut),
            (409, Some("ALREADY_BOUGHT")) => Next::Stop(Final::AlreadyBought),
            (409, Some("PROMO_NOT_STARTED")) | (429, _) => Next::Busy,
            (s, _) if s >= 500 => Next::Unavailable,
            _ => Next::Stop(Final::Unexpected(reply.label())),
        },
    }
}

/// 50–200 ms; after `streak` refusals in a row, doubled each time up to 2 s
/// (a real client backs off while a dependency is down).
async fn back_off(streak: u32) {
    let base = 50u64 << streak.min(6);
    let ms = (base + rand::random::<u64>() % (3 * base + 1)).min(2_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The buyers, let in at `BUYERS_PER_SEC` at most by `CONCURRENCY` clients.
struct Crowd {
    api: Api,
    promo: i64,
    item: i64,
    phones: Vec<String>,
    next: AtomicUsize,
    /// When the next buyer may start.
    pacer: Mutex<Instant>,
    started: Instant,
    done: AtomicBool,
    log: Mutex<CrowdLog>,
}

#[derive(Default)]
struct CrowdLog {
    answers: Vec<Answer>,
    told: Vec<Told>,
    finals: BTreeMap<&'static str, usize>,
    /// Buyers that gave up or got an answer they cannot act on.
    stuck: Vec<String>,
}

impl Crowd {
    fn new(api: Api, sale: &Sale) -> Arc<Self> {
        Arc::new(Crowd {
            api,
            promo: sale.promo,
            item: sale.item,
            phones: sale.phones.clone(),
            next: AtomicUsize::new(0),
            pacer: Mutex::new(Instant::now()),
            started: Instant::now(),
            done: AtomicBool::new(false),
            log: Mutex::new(CrowdLog::default()),
        })
    }

    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.started).as_secs_f64()
    }

    /// Runs every buyer to a final answer; returns how long it took.
    async fn run(self: Arc<Self>) -> f64 {
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let crowd = self.clone();
                tokio::spawn(async move {
                    while let Some(phone) = crowd.next_buyer().await {
                        let last = crowd.buy(&phone).await;
                        let mut log = crowd.log.lock().unwrap();
                        *log.finals.entry(last.name()).or_default() += 1;
                        match last {
                            Final::GaveUp => log.stuck.push(format!(
                                "{phone}: no final answer in {} s",
                                BUYER_DEADLINE.as_secs()
                            )),
                            Final::Unexpected(what) => log.stuck.push(format!("{phone}: {what}")),
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a crowd task panicked");
        }
        self.done.store(true, Ordering::Release);
        self.secs(Instant::now())
    }

    /// The next buyer, once the pace lets one more in.
    async fn next_buyer(&self) -> Option<String> {
        let phone = self.phones.get(self.next.fetch_add(1, Ordering::Relaxed))?;
        let slot = {
            let mut next = self.pacer.lock().unwrap();
            // Never a burst to catch up after a stall.
            let slot = (*next).max(Instant::now());
            let period_us = 1_000_000 / BUYERS_PER_SEC;
            *next = slot + Duration::from_micros(period_us / 2 + rand::random::<u64>() % period_us);
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
        Some(phone.clone())
    }

    async fn call(&self, endpoint: &'static str, path: &str, auth: &str, body: Value) -> Reply {
        let reply = self
            .api
            .send(reqwest::Method::POST, path, auth, Some(body))
            .await;
        let answer = Answer {
            at: self.secs(Instant::now()),
            endpoint,
            label: reply.label(),
            violation: reply.violation(),
        };
        self.log.lock().unwrap().answers.push(answer);
        reply
    }

    /// One buyer, as a real client: log in, get a token, order; log in
    /// again on 401 (sessions live in Redis), a new token on
    /// `INVALID_TOKEN`, back off and retry on 429 / 503 / no answer.
    async fn buy(&self, phone: &str) -> Final {
        let deadline = Instant::now() + BUYER_DEADLINE;
        let mut session = String::new();
        let mut token = String::new();
        let mut streak = 0u32;
        let mut renewals = 0u32;
        while Instant::now() < deadline {
            let stage = match (session.is_empty(), token.is_empty()) {
                (true, _) => Stage::LogIn,
                (false, true) => Stage::Token,
                (false, false) => Stage::Order,
            };
            let reply = match stage {
                Stage::LogIn => {
                    let body = json!({"phone": phone, "password": PASSWORD});
                    self.call("sessions", "/api/v1/sessions", "", body).await
                }
                Stage::Token => {
                    let path = format!("/api/v1/promos/{}/tokens", self.promo);
                    let body = json!({"item_id": self.item});
                    self.call("tokens", &path, &session, body).await
                }
                Stage::Order => {
                    let body = json!({"promo_id": self.promo, "item_id": self.item,
                                      "amount": 1, "token": token});
                    self.call("orders", "/api/v1/orders", &session, body).await
                }
            };
            if let Reply::Answer {
                status: 201, body, ..
            } = &reply
            {
                streak = 0;
                let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
                let (slot, name) = match stage {
                    Stage::LogIn => (&mut session, "token"),
                    Stage::Token => (&mut token, "token"),
                    Stage::Order => {
                        let order_no = field("order_no");
                        if order_no.is_empty() {
                            return Final::Unexpected(format!("201 without order_no: {body}"));
                        }
                        self.log.lock().unwrap().told.push(Told {
                            phone: phone.to_owned(),
                            session,
                            order_no,
                        });
                        return Final::Bought;
                    }
                };
                *slot = field(name);
                if slot.is_empty() {
                    return Final::Unexpected(format!("201 without {name}: {body}"));
                }
                continue;
            }
            match next_step(&reply) {
                Next::Stop(last) => return last,
                Next::LogIn | Next::NewToken if matches!(stage, Stage::LogIn) => {
                    return Final::Unexpected(format!("login: {}", reply.label()));
                }
                step @ (Next::LogIn | Next::NewToken) => {
                    // A 401 leaves the token valid (it is bound to the user),
                    // unless Redis lost it too: then a 403 follows.
                    match step {
                        Next::LogIn => session.clear(),
                        _ => token.clear(),
                    }
                    streak = 0;
                    // The first renewal at once, later ones after a pause.
                    renewals += 1;
                    if renewals > 1 {
                        back_off(0).await;
                    }
                }
                Next::Busy => {
                    streak = 0;
                    back_off(0).await;
                }
                Next::Unavailable => {
                    back_off(streak).await;
                    streak += 1;
                }
            }
        }
        Final::GaveUp
    }
}

// ---------------------------------------------------------------- checks

struct DrillReport {
    figures: Value,
    failures: Vec<String>,
}

/// Waits for the sale to settle, then checks it against MariaDB and the
/// crowd's log.
async fn check(
    c: &Cluster,
    crowd: &Crowd,
    sale: &Sale,
    fault: Fault,
    crowd_secs: f64,
    window: Option<FaultWindow>,
) -> DrillReport {
    let mut failures = Vec::new();
    let (stats, settled, settle_secs) = settle(&crowd.api, sale.promo).await;
    if !settled {
        failures.push(format!(
            "not settled {} s after the crowd (stock_log init rows left, or DB stock ≠ Redis stock): {stats}",
            SETTLE_TIMEOUT.as_secs()
        ));
    }
    let window = window.unwrap_or_else(|| {
        failures.push("the fault never landed: the crowd ended before a quarter was sold".into());
        FaultWindow {
            sold_at_injection: 0,
            start: 0.0,
            back: 0.0,
        }
    });
    let stock_cache = stats["stock_cache"].as_i64();

    // MariaDB, directly.
    let pool = mysql(c).await;
    let p = sale.promo;
    let count = |sql: &'static str| scalar(&pool, sql, p);
    let orders =
        count("SELECT COUNT(*) FROM order_info WHERE promo_id = ? AND status <> 'cancelled'").await;
    let rows = count("SELECT COUNT(*) FROM order_info WHERE promo_id = ?").await;
    let buyers = count("SELECT COUNT(DISTINCT user_id) FROM order_info WHERE promo_id = ?").await;
    let sold = count(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS SIGNED) FROM order_info \
         WHERE promo_id = ? AND status <> 'cancelled'",
    )
    .await;
    let stock_db = count(
        "SELECT s.stock FROM item_stock s JOIN promo p ON p.item_id = s.item_id WHERE p.id = ?",
    )
    .await;
    let sales =
        count("SELECT i.sales FROM item i JOIN promo p ON p.item_id = i.id WHERE p.id = ?").await;
    let unsettled = count(
        "SELECT COUNT(*) FROM stock_log WHERE promo_id = ? AND status NOT IN ('committed', 'rolled_back')",
    )
    .await;
    // A committed reservation is an order, an order has a committed one.
    let unmatched = count(
        "SELECT COUNT(*) FROM stock_log s LEFT JOIN order_info o ON o.stock_log_id = s.id \
         WHERE s.promo_id = ? AND (s.status = 'committed') <> (o.order_no IS NOT NULL)",
    )
    .await;
    let in_db: HashMap<String, String> = sqlx::query(
        "SELECT o.order_no, u.phone FROM order_info o JOIN user u ON u.id = o.user_id \
         WHERE o.promo_id = ?",
    )
    .bind(p)
    .fetch_all(&pool)
    .await
    .expect("the promo's orders")
    .into_iter()
    .map(|r| (r.get("order_no"), r.get("phone")))
    .collect();

    let log = std::mem::take(&mut *crowd.log.lock().unwrap());
    let lost: Vec<&str> = log
        .told
        .iter()
        .filter(|t| !in_db.contains_key(&t.order_no))
        .map(|t| t.order_no.as_str())
        .collect();
    let wrong_buyer = log
        .told
        .iter()
        .filter(|t| {
            in_db
                .get(&t.order_no)
                .is_some_and(|phone| *phone != t.phone)
        })
        .count();
    let unfindable = crowd.unfindable(&log.told).await;

    let mut expect = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    expect(
        orders <= STOCK,
        format!("oversold: {orders} orders for {STOCK} units"),
    );
    expect(buyers == rows, format!("{rows} orders for {buyers} buyers"));
    expect(
        lost.is_empty(),
        format!("orders told bought but missing: {lost:?}"),
    );
    expect(
        wrong_buyer == 0,
        format!("{wrong_buyer} orders of another buyer"),
    );
    expect(
        unfindable == 0,
        format!("{unfindable} orders not found by their buyer"),
    );
    expect(
        stock_cache.map(|s| s + sold) == Some(STOCK),
        format!("Redis stock {stock_cache:?} + sold {sold} ≠ {STOCK}"),
    );
    expect(
        stock_db + sold == STOCK,
        format!("DB stock {stock_db} + sold {sold} ≠ {STOCK}"),
    );
    expect(sales == sold, format!("item sales {sales} ≠ sold {sold}"));
    expect(
        unsettled == 0,
        format!("{unsettled} stock_log rows neither committed nor rolled back"),
    );
    expect(
        unmatched == 0,
        format!("{unmatched} stock_log rows and orders do not match"),
    );
    expect(sold == STOCK, format!("not sold out: {sold} of {STOCK}"));

    // The answers.
    let mut answers = BTreeMap::<String, usize>::new();
    let mut by_endpoint = BTreeMap::<&str, BTreeMap<String, usize>>::new();
    let mut bad = BTreeMap::<(&str, &str), (usize, f64, f64)>::new();
    for a in &log.answers {
        *answers.entry(a.label.clone()).or_default() += 1;
        *by_endpoint
            .entry(a.endpoint)
            .or_default()
            .entry(a.label.clone())
            .or_default() += 1;
        if a.violation {
            let e = bad
                .entry((a.endpoint, a.label.as_str()))
                .or_insert((0, a.at, a.at));
            e.0 += 1;
            e.2 = a.at;
        }
    }
    let mut violations: Vec<String> = bad
        .iter()
        .map(|((endpoint, label), (n, first, last))| {
            format!("{endpoint}: {label} ×{n} (at {first:.1}–{last:.1} s)")
        })
        .collect();
    violations.extend(log.stuck.iter().take(20).cloned());
    if log.stuck.len() > 20 {
        violations.push(format!("… {} buyers stuck in all", log.stuck.len()));
    }
    let refusals: Vec<f64> = log
        .answers
        .iter()
        .filter(|a| a.label.starts_with("503"))
        .map(|a| a.at)
        .collect();
    let refused_secs = match (refusals.first(), refusals.last()) {
        (Some(first), Some(last)) => last - first,
        _ => 0.0,
    };
    let last_order = log
        .answers
        .iter()
        .rev()
        .find(|a| a.endpoint == "orders" && a.label == "201")
        .map(|a| a.at);
    if !violations.is_empty() {
        failures.push(format!("violations: {violations:?}"));
    }

    let round = |s: f64| (s * 10.0).round() / 10.0;
    let figures = json!({
        "drill": fault.drill(),
        "buyers": BUYERS,
        "stock": STOCK,
        "concurrency": CONCURRENCY,
        "buyers_per_sec": BUYERS_PER_SEC,
        "request_deadline_ms": REQUEST_DEADLINE.as_millis() as u64,
        "fault_at_sold": window.sold_at_injection,
        "fault_from_secs": round(window.start),
        "fault_secs": round(window.back - window.start),
        "refused_secs": round(refused_secs),
        "last_order_secs": last_order.map(round),
        "crowd_secs": round(crowd_secs),
        "settle_secs": round(settle_secs),
        "answers": answers,
        "answers_by_endpoint": by_endpoint,
        "finals": log.finals,
        "sold": sold,
        "told_bought": log.told.len(),
        "lost_orders": lost.len(),
        "leaked_units": stock_cache.map(|s| STOCK - sold - s),
        "stock_cache": stock_cache,
        "stock_db": stock_db,
        "stock_log": stats["stock_log"],
        "violations": violations,
        "failed_checks": failures,
    });
    DrillReport { figures, failures }
}

/// Waits until no reservation is open (`stock_log` init) and the DB stock
/// equals the Redis stock: the last stats, whether it settled, the seconds
/// waited.
async fn settle(api: &Api, promo: i64) -> (Value, bool, f64) {
    let started = Instant::now();
    let mut last = Value::Null;
    loop {
        if let Some(s) = api.stats(promo).await {
            let settled = s["stock_log"]["init"] == 0
                && s["stock_cache"].is_i64()
                && s["stock_cache"] == s["stock_db"];
            last = s;
            if settled {
                return (last, true, started.elapsed().as_secs_f64());
            }
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            return (last, false, started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Crowd {
    /// How many orders told bought their buyer cannot find under My orders
    /// (logging in again when the session was lost with Redis).
    async fn unfindable(&self, told: &[Told]) -> usize {
        futures::stream::iter(told)
            .map(|t| async move {
                let path = format!("/api/v1/orders/{}", t.order_no);
                let mut session = t.session.clone();
                for _ in 0..5 {
                    match self
                        .api
                        .send(reqwest::Method::GET, &path, &session, None)
                        .await
                    {
                        Reply::Answer { status: 200, .. } => return 0,
                        Reply::Answer { status: 401, .. } => {
                            let login = json!({"phone": t.phone, "password": PASSWORD});
                            let r = self
                                .api
                                .send(reqwest::Method::POST, "/api/v1/sessions", "", Some(login))
                                .await;
                            if let Reply::Answer {
                                status: 201, body, ..
                            } = r
                            {
                                session = body["token"].as_str().unwrap_or_default().to_owned();
                            }
                        }
                        _ => back_off(0).await,
                    }
                }
                1
            })
            .buffer_unordered(16)
            .fold(0, |n, missing| async move { n + missing })
            .await
    }
}

/// The drill's figures: one `FAULT_DRILL {json}` line on stderr, written
/// past the harness' capture, and the same line appended to
/// `<cluster dir>/logs/fault-drills.jsonl`.
fn publish(figures: &Value) {
    use std::io::Write as _;
    // Not eprintln!: the harness captures that for a passing test.
    let _ = std::io::stderr().write_all(format!("FAULT_DRILL {figures}\n").as_bytes());
    let file = cluster_dir().join("logs").join("fault-drills.jsonl");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    {
        let _ = f.write_all(format!("{figures}\n").as_bytes());
    }
}
