//! `seckill drill`: a flash crowd against any deployment, over HTTP only.
//!
//! It sets a sale up through the admin API (an item, a promo starting a
//! few seconds later, published), creates and logs in the buyers, releases
//! them at the promo start as `concurrency` keep-alive clients (token, then
//! order; a 429 is answered by back-off and retry, as a real client does),
//! waits for the database to catch up, and checks the invariants a user of
//! a flash-sale system relies on. Any violation makes it exit non-zero.

pub mod chart;
mod client;
mod report;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde_json::json;

use client::{Api, Outcome};
pub use report::{DrillReport, Latency};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// The deployment's base URL (the embedded server or the nginx front).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The admin token of that deployment.
    #[arg(long, env = "SECKILL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Buyers in the crowd (each tries to buy one unit once).
    #[arg(long, default_value_t = 1000)]
    pub buyers: usize,
    /// Units for sale.
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    /// Concurrent clients (keep-alive connections).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Seconds between setting the sale up and its start.
    #[arg(long, default_value_t = 2)]
    pub start_in: u64,
    /// How long to wait for the database to catch up after the crowd.
    #[arg(long, default_value_t = 60)]
    pub settle_timeout: u64,
    /// Retries of one request answered 429 (or 503) before the buyer gives
    /// up.
    #[arg(long, default_value_t = 50)]
    pub max_retries: u32,
    /// Percent of the buyers who, having bought, at once try to buy again
    /// (the per-user limit must refuse them once they hold it).
    #[arg(long, default_value_t = 5)]
    pub again_percent: u8,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

struct Buyer {
    phone: String,
    session: Option<String>,
}

/// Per-outcome latencies and counts of one kind of request.
#[derive(Default)]
struct Samples {
    by_outcome: std::collections::BTreeMap<String, Vec<f64>>,
    requests: usize,
}

impl Samples {
    fn record(&mut self, outcome: &str, ms: f64) {
        self.requests += 1;
        self.by_outcome
            .entry(outcome.to_owned())
            .or_default()
            .push(ms);
    }
}

/// Runs the drill; the report says which invariants held.
pub async fn run(args: DrillArgs) -> anyhow::Result<DrillReport> {
    if args.buyers == 0 || args.concurrency == 0 || args.stock < 0 {
        bail!("--buyers and --concurrency must be positive and --stock not negative");
    }
    if args.start_in > 86_400 || !(1..=86_400).contains(&args.settle_timeout) {
        bail!("--start-in must be at most 86400 s and --settle-timeout 1..=86400 s");
    }
    if args.again_percent > 100 {
        bail!("--again-percent must be 0..=100");
    }
    let api = Api::new(&args.url, &args.admin_token, args.concurrency)?;
    let cfg = api
        .client_config()
        .await
        .context("cannot read /api/v1/config: is the URL a seckill deployment?")?;
    if cfg.captcha_enabled {
        bail!("the deployment has captcha on; start it with SECKILL_CAPTCHA_ENABLED=false for a drill");
    }
    let quiet = args.json;
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };

    // The buyers.
    let run_id = Utc::now().timestamp_millis() % 10_000;
    let prefix = format!("19{run_id:04}");
    let mut buyers: Vec<Buyer> = (0..args.buyers)
        .map(|i| Buyer {
            phone: format!("{prefix}{i:05}"),
            session: None,
        })
        .collect();
    let phones: Vec<String> = buyers.iter().map(|b| b.phone.clone()).collect();
    api.create_users(&phones, "drill-password").await?;
    let bar = progress(quiet, args.buyers as u64, "logging in");
    let sessions = Arc::new(Mutex::new(vec![None; args.buyers]));
    let next = Arc::new(AtomicUsize::new(0));
    let phones = Arc::new(phones);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.min(64) {
        let (api, sessions, next, phones, bar) = (
            api.clone(),
            sessions.clone(),
            next.clone(),
            phones.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(phone) = phones.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                let token = api.login(phone, "drill-password").await?;
                sessions.lock()[i] = Some(token);
                bar.inc(1);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    bar.finish_and_clear();
    for (b, s) in buyers.iter_mut().zip(sessions.lock().drain(..)) {
        b.session = s;
    }

    // The sale, set up once the buyers are in: the crowd meets its start
    // (setting thousands of buyers up takes longer than `--start-in`).
    let item = api
        .admin_post("/api/v1/admin/items", json!({"title": format!("Drill item {run_id}"), "price_cents": 10_000, "stock": args.stock, "description": "seckill drill"}))
        .await?;
    let item_id = item["id"].as_i64().context("item id")?;
    let server_now = api.server_time().await?;
    let start = server_now + chrono::Duration::seconds(args.start_in as i64);
    let promo = api
        .admin_post(
            "/api/v1/admin/promos",
            json!({"item_id": item_id, "name": format!("Drill {run_id}"), "price_cents": 5_000,
                   "start_at": start.to_rfc3339(), "end_at": (start + chrono::Duration::hours(1)).to_rfc3339()}),
        )
        .await?;
    let promo_id = promo["id"].as_i64().context("promo id")?;
    api.admin_post(
        &format!("/api/v1/admin/promos/{promo_id}/publish"),
        json!({}),
    )
    .await?;
    say(format!(
        "sale: item {item_id}, promo {promo_id}, {} units, the deployment's strategy {}",
        args.stock, cfg.order_strategy
    ));

    // Wait for the start, on the server's clock.
    let wait = (start - api.server_time().await?)
        .to_std()
        .unwrap_or_default();
    say(format!(
        "{} buyers logged in; the sale opens in {:.1} s",
        args.buyers,
        wait.as_secs_f64()
    ));
    tokio::time::sleep(wait + Duration::from_millis(20)).await;

    // The crowd.
    let bar = progress(quiet, args.buyers as u64, "buying");
    let tokens = Arc::new(Mutex::new(Samples::default()));
    let orders = Arc::new(Mutex::new(Samples::default()));
    let accepted = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let finals = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, usize>::new(),
    ));
    let last_accept = Arc::new(Mutex::new(None::<Instant>));
    let again = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, usize>::new(),
    ));
    let journeys = Arc::new(Mutex::new(Vec::<f64>::new()));
    let buyers = Arc::new(buyers);
    let next = Arc::new(AtomicUsize::new(0));
    let crowd_start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let api = api.clone();
        let (buyers, next, bar) = (buyers.clone(), next.clone(), bar.clone());
        let (tokens, orders, accepted, finals, last_accept, journeys) = (
            tokens.clone(),
            orders.clone(),
            accepted.clone(),
            finals.clone(),
            last_accept.clone(),
            journeys.clone(),
        );
        let max_retries = args.max_retries;
        let again_percent = usize::from(args.again_percent);
        let again = again.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(buyer) = buyers.get(i) else { return };
                let session = buyer.session.as_deref().unwrap_or_default();
                // A second try's requests are not in the crowd's figures.
                let attempt = |counted: bool| {
                    let samples = counted.then_some((&*tokens, &*orders));
                    buy(&api, session, promo_id, item_id, max_retries, samples)
                };
                let accept = |no: &str| {
                    accepted.lock().push((i, no.to_owned()));
                    let now = Instant::now();
                    let mut last = last_accept.lock();
                    *last = Some(last.map_or(now, |l| l.max(now)));
                };
                let began = Instant::now();
                let outcome = attempt(true).await;
                if let Outcome::Created(no) = &outcome {
                    journeys.lock().push(began.elapsed().as_secs_f64() * 1000.0);
                    accept(no);
                }
                *finals.lock().entry(outcome.label()).or_default() += 1;
                // A buyer who got an order tries once more; what the
                // deployment answered is counted apart from the finals, and
                // its requests apart from the crowd's figures.
                if matches!(outcome, Outcome::Created(_)) && (i % 100) < again_percent {
                    let outcome = attempt(false).await;
                    if let Outcome::Created(no) = &outcome {
                        accept(no);
                    }
                    *again.lock().entry(outcome.label()).or_default() += 1;
                }
                bar.inc(1);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let crowd_secs = crowd_start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Settling: the DB catches up with the ledger.
    let settle_from = last_accept.lock().unwrap_or_else(Instant::now);
    let settle_deadline = Instant::now() + Duration::from_secs(args.settle_timeout);
    let (stats, settled) = loop {
        // A busy or failing answer is asked again until the deadline: one
        // lost poll must not throw the crowd's figures away.
        let s = match api
            .admin_get(&format!("/api/v1/admin/promos/{promo_id}/stats"))
            .await
        {
            Ok(s) => s,
            Err(e) if Instant::now() < settle_deadline => {
                tracing::debug!(error = %e, "stats not read; asking again");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e.context("the promo's stats could not be read")),
        };
        // The pure-database strategies keep no ledger: null there.
        let ledger_ok = if report::keeps_a_ledger(sale_strategy(&s, &cfg.order_strategy)) {
            s["stock_cache"] == s["stock_db"]
        } else {
            s["stock_cache"].is_null()
        };
        let caught_up = s["stock_log"]["init"] == 0
            && ledger_ok
            // (A server before `sales_db`: not asked.)
            && (s["sales_db"].is_null() || s["sales_db"] == s["sold"])
            && s["stock_db"].as_i64() == Some(args.stock - s["sold"].as_i64().unwrap_or(0));
        if caught_up {
            break (s, true);
        }
        if Instant::now() > settle_deadline {
            break (s, false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let settle_ms = settle_from.elapsed().as_secs_f64() * 1000.0;
    let item_now = api.get_json(&format!("/api/v1/items/{item_id}")).await?;

    // Every order a buyer was told about exists, and is theirs.
    let accepted = accepted.lock().clone();
    let mut missing = 0;
    for (i, no) in &accepted {
        let session = buyers[*i].session.as_deref().unwrap_or_default();
        if !api.order_exists(session, no).await? {
            missing += 1;
        }
    }

    let orders = std::mem::take(&mut *orders.lock());
    let tokens = std::mem::take(&mut *tokens.lock());
    let finals = std::mem::take(&mut *finals.lock());
    let report = report::build(report::Inputs {
        strategy: sale_strategy(&stats, &cfg.order_strategy).to_owned(),
        url: args.url.clone(),
        buyers: args.buyers,
        concurrency: args.concurrency,
        stock: args.stock,
        per_user_limit: cfg.per_user_limit,
        promo_id,
        item_id,
        crowd_secs,
        last_accept_secs: last_accept.lock().map(|t| (t - crowd_start).as_secs_f64()),
        settle_ms,
        settled,
        settle_timeout_secs: args.settle_timeout,
        accepted: accepted.len(),
        missing,
        stats,
        item: item_now,
        tokens,
        orders,
        finals,
        again: std::mem::take(&mut *again.lock()),
        journeys: std::mem::take(&mut *journeys.lock()),
    });
    Ok(report)
}

fn progress(hidden: bool, len: u64, what: &'static str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

/// One buyer: a token, then an order, each retried on 429 (busy) or 503
/// (a dependency down: nothing was written, the token is good again) with
/// jittered exponential back-off. Each request's latency goes to `samples`
/// (tokens, orders) when given.
async fn buy(
    api: &Api,
    session: &str,
    promo: i64,
    item: i64,
    max_retries: u32,
    samples: Option<(&Mutex<Samples>, &Mutex<Samples>)>,
) -> Outcome {
    let (tokens, orders) = samples.unzip();
    let record = |into: Option<&Mutex<Samples>>, outcome: &Outcome, ms: f64| {
        if let Some(s) = into {
            s.lock().record(&outcome.label(), ms);
        }
    };
    let mut attempt = 0;
    let token = loop {
        let (outcome, ms) = api.token(session, promo, item).await;
        record(tokens, &outcome, ms);
        match outcome {
            Outcome::Token(t) => break t,
            Outcome::Refused(429 | 503, _) if attempt < max_retries => {
                attempt += 1;
                backoff(attempt).await;
            }
            other => return other,
        }
    };
    let mut attempt = 0;
    loop {
        let (outcome, ms) = api.order(session, promo, item, &token).await;
        record(orders, &outcome, ms);
        match outcome {
            Outcome::Refused(429 | 503, _) if attempt < max_retries => {
                attempt += 1;
                backoff(attempt).await;
            }
            other => return other,
        }
    }
}

async fn backoff(attempt: u32) {
    let base = 10u64.saturating_mul(1 << attempt.min(7)).min(1000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
}

/// The strategy the drill's promo was sold by: the one it was published
/// under (its stats say), else — a server before promos recorded it — the
/// deployment's (`/api/v1/config`). They differ only in a deployment whose
/// instances are configured apart, where the promo's is the truth.
fn sale_strategy<'a>(stats: &'a serde_json::Value, deployment: &'a str) -> &'a str {
    stats["strategy"].as_str().unwrap_or(deployment)
}
