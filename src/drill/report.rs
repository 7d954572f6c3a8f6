//! The drill's report: figures, latency percentiles and the invariants.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::Samples;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn latency(mut xs: Vec<f64>) -> Latency {
    xs.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        if xs.is_empty() {
            0.0
        } else {
            xs[((xs.len() - 1) as f64 * q).round() as usize]
        }
    };
    Latency {
        count: xs.len(),
        p50_ms: pick(0.50),
        p90_ms: pick(0.90),
        p99_ms: pick(0.99),
        max_ms: xs.last().copied().unwrap_or(0.0),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub strategy: String,
    pub url: String,
    pub buyers: usize,
    pub concurrency: usize,
    pub stock: i64,
    pub promo_id: i64,
    pub item_id: i64,
    /// Units sold (orders not cancelled) as the deployment reports.
    pub sold: i64,
    /// Orders the buyers were told about.
    pub accepted: usize,
    pub crowd_secs: f64,
    /// Accepted orders per second, from the crowd's start to the last accepted order.
    pub orders_per_sec: f64,
    /// Order requests (any answer) per second over the crowd.
    pub order_requests_per_sec: f64,
    pub token_requests_per_sec: f64,
    pub order_p50_ms: f64,
    pub order_p99_ms: f64,
    /// From the last accepted order until the DB caught up (or, when
    /// `settled` is false, until the drill stopped waiting).
    pub settle_ms: f64,
    pub settled: bool,
    /// A successful buyer's whole journey: from the first token request to
    /// the accepted order, back-offs after 429 included.
    pub buyer_journey: Latency,
    pub orders: BTreeMap<String, Latency>,
    pub tokens: BTreeMap<String, Latency>,
    /// How each buyer's attempt ended.
    pub outcomes: BTreeMap<String, usize>,
    /// How the second attempts of buyers who had bought ended
    /// (`--again-percent`).
    pub again: BTreeMap<String, usize>,
    pub stats: Value,
    pub violations: Vec<String>,
}

pub struct Inputs {
    pub strategy: String,
    pub url: String,
    pub buyers: usize,
    pub concurrency: usize,
    pub stock: i64,
    pub per_user_limit: i64,
    pub promo_id: i64,
    pub item_id: i64,
    pub crowd_secs: f64,
    pub last_accept_secs: Option<f64>,
    pub settle_ms: f64,
    /// Whether the DB caught up before `--settle-timeout`.
    pub settled: bool,
    pub settle_timeout_secs: u64,
    pub accepted: usize,
    pub missing: usize,
    pub stats: Value,
    pub item: Value,
    pub tokens: Samples,
    pub orders: Samples,
    pub finals: BTreeMap<String, usize>,
    pub again: BTreeMap<String, usize>,
    /// Each successful buyer's journey, ms.
    pub journeys: Vec<f64>,
}

/// Whether a strategy (by name: the promo's, from its stats, or the
/// deployment's, `/api/v1/config`'s) reserves in a ledger: write-behind;
/// the pure-database strategies keep none. A name this build does not know
/// keeps none.
pub fn keeps_a_ledger(strategy: &str) -> bool {
    strategy
        .parse::<crate::domain::OrderStrategy>()
        .is_ok_and(|s| s.keeps_ledger())
}

pub fn build(i: Inputs) -> DrillReport {
    let s = &i.stats;
    let sold = s["sold"].as_i64().unwrap_or(-1);
    let orders_db = s["orders"].as_i64().unwrap_or(-1);
    let stock_db = s["stock_db"].as_i64().unwrap_or(-1);
    let sales = i.item["sales"].as_i64().unwrap_or(-1);
    let sales_db = s["sales_db"].as_i64();
    let mut v = Vec::new();
    if sold > i.stock || i.accepted as i64 > i.stock {
        v.push(format!(
            "oversold: {sold} sold ({} accepted) of {} units",
            i.accepted, i.stock
        ));
    }
    if orders_db != i.accepted as i64 {
        v.push(format!(
            "orders in the DB ({orders_db}) ≠ orders buyers were told about ({})",
            i.accepted
        ));
    }
    if i.missing > 0 {
        v.push(format!(
            "{} accepted orders cannot be found by their buyers",
            i.missing
        ));
    }
    if sold != i.accepted as i64 || sales != sold {
        v.push(format!(
            "orders ({}) / sold ({sold}) / item sales ({sales}) disagree",
            i.accepted
        ));
    }
    // The deployment's own count, per buyer. (A server before
    // `max_units_per_buyer`: not asked.)
    if let Some(most) = s["max_units_per_buyer"]
        .as_i64()
        .filter(|&n| n > i.per_user_limit)
    {
        v.push(format!(
            "a buyer holds {most} units, above the per-user limit ({} per promo)",
            i.per_user_limit
        ));
    }
    if !i.settled {
        v.push(format!(
            "the DB did not catch up within --settle-timeout ({} s)",
            i.settle_timeout_secs
        ));
    }
    if stock_db != i.stock - sold {
        v.push(format!(
            "DB stock {stock_db} ≠ initial {} − sold {sold} (not settled or lost)",
            i.stock
        ));
    }
    // The drill's item is its own: its DB sales are this sale's. (A
    // server before `sales_db` reports none.)
    if let Some(sales_db) = sales_db.filter(|&n| n != sold) {
        v.push(format!("DB item sales {sales_db} ≠ sold {sold}"));
    }
    match s["stock_cache"].as_i64() {
        Some(cache) if cache != stock_db => {
            v.push(format!("cache (Redis) stock {cache} ≠ DB stock {stock_db}"));
        }
        None if keeps_a_ledger(&i.strategy) => {
            v.push("the ledger holds no stock for the promo (lost, and not rebuilt)".into());
        }
        _ => {}
    }
    if s["stock_log"]["init"].as_i64() != Some(0) {
        v.push(format!(
            "{} stock_log rows still init after settling",
            s["stock_log"]["init"]
        ));
    }
    let refused_other = i.finals.iter().any(|(k, _)| {
        !matches!(
            k.as_str(),
            "created" | "409 SOLD_OUT" | "409 ALREADY_BOUGHT"
        )
    });
    if i.buyers as i64 >= i.stock && sold < i.stock && !refused_other {
        v.push(format!(
            "stock leaked: {} units unsold while every other buyer was told sold out",
            i.stock - sold
        ));
    }
    let order_latencies: BTreeMap<String, Latency> = i
        .orders
        .by_outcome
        .iter()
        .map(|(k, xs)| (k.clone(), latency(xs.clone())))
        .collect();
    let created = order_latencies.get("created");
    let window = i.last_accept_secs.unwrap_or(i.crowd_secs).max(1e-9);
    DrillReport {
        strategy: i.strategy,
        url: i.url,
        buyers: i.buyers,
        concurrency: i.concurrency,
        stock: i.stock,
        promo_id: i.promo_id,
        item_id: i.item_id,
        sold,
        accepted: i.accepted,
        crowd_secs: i.crowd_secs,
        orders_per_sec: i.accepted as f64 / window,
        order_requests_per_sec: i.orders.requests as f64 / i.crowd_secs.max(1e-9),
        token_requests_per_sec: i.tokens.requests as f64 / i.crowd_secs.max(1e-9),
        order_p50_ms: created.map_or(0.0, |l| l.p50_ms),
        order_p99_ms: created.map_or(0.0, |l| l.p99_ms),
        settle_ms: i.settle_ms,
        settled: i.settled,
        buyer_journey: latency(i.journeys),
        orders: order_latencies,
        tokens: i
            .tokens
            .by_outcome
            .into_iter()
            .map(|(k, xs)| (k, latency(xs)))
            .collect(),
        outcomes: i.finals,
        again: i.again,
        stats: i.stats,
        violations: v,
    }
}

impl DrillReport {
    /// The human report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(
            &mut out,
            format!(
                "drill: {} buyers, {} clients, {} units, strategy {} at {}",
                self.buyers, self.concurrency, self.stock, self.strategy, self.url
            ),
        );
        line(
            &mut out,
            format!(
                "crowd: {:.2} s; tokens {:.0} req/s; orders {:.0} req/s; accepted {:.0} orders/s",
                self.crowd_secs,
                self.token_requests_per_sec,
                self.order_requests_per_sec,
                self.orders_per_sec
            ),
        );
        line(
            &mut out,
            format!(
                "sold {} of {}; DB {} {:.0} ms after the last accepted order",
                self.sold,
                self.stock,
                if self.settled {
                    "caught up"
                } else {
                    "still not caught up"
                },
                self.settle_ms
            ),
        );
        for (kind, table) in [("order", &self.orders), ("token", &self.tokens)] {
            for (k, l) in table {
                line(&mut out, format!("  {kind:5} {k:<22} n={:<7} p50 {:>7.2} ms  p90 {:>7.2}  p99 {:>7.2}  max {:>7.2}", l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms));
            }
        }
        let j = &self.buyer_journey;
        line(&mut out, format!("  buyer journey to an order (back-offs included) n={:<7} p50 {:>7.2} ms  p90 {:>7.2}  p99 {:>7.2}  max {:>7.2}", j.count, j.p50_ms, j.p90_ms, j.p99_ms, j.max_ms));
        for (k, n) in &self.outcomes {
            line(&mut out, format!("  buyers ended {k:<22} {n}"));
        }
        for (k, n) in &self.again {
            line(&mut out, format!("  a second try ended {k:<15} {n}"));
        }
        if self.violations.is_empty() {
            line(&mut out, "invariants: all hold (no oversell, no lost order, DB = cache, orders = sales = sold)".into());
        } else {
            for v in &self.violations {
                line(&mut out, format!("VIOLATION: {v}"));
            }
        }
        out
    }
}
