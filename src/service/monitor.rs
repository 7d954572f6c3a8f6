//! What the admin's live dashboard shows beyond a promo's stock: refusals by
//! reason (counted in each instance, flushed every second into a shared
//! hash, so the figures are the whole cluster's) and the instances with
//! their health (each writes a heartbeat into a shared hash).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Context, Ports, ServiceResult};
use crate::domain::PromoId;

/// How long shared refusal counters and the instance registry live after
/// their last write.
const SHARED_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shared hash of instance heartbeats.
const INSTANCES_KEY: &str = "instances";

fn refused_key(promo: PromoId) -> String {
    format!("refused:{promo}")
}

/// One instance's last heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceBeat {
    pub node_id: u16,
    pub http_addr: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    /// Each dependency's verdict ("ok" or "down: …").
    pub checks: BTreeMap<String, String>,
}

/// An instance as the dashboard shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceStatus {
    pub beat: InstanceBeat,
    /// No heartbeat for longer than `stale_after`.
    pub stale: bool,
}

pub struct SaleMonitor {
    cx: Context,
    /// Refusals counted since the last flush, per promo and reason.
    pending: Mutex<HashMap<(PromoId, &'static str), i64>>,
    started_at: DateTime<Utc>,
    /// The listen address, with the machine's name for an unspecified IP
    /// (every instance of a cluster would read `0.0.0.0:8080`).
    shown_addr: String,
    /// The dependencies' last verdicts and when they were taken; the lock
    /// held while a check runs, so that callers wait for one check.
    checks: tokio::sync::Mutex<Option<(std::time::Instant, BTreeMap<String, String>)>>,
}

/// `addr` as the instance list shows it: `0.0.0.0:8080` as `host:8080`
/// when the machine's name is known, anything else as it is.
fn shown_addr(addr: &str, host: Option<&str>) -> String {
    match (addr.parse::<std::net::SocketAddr>(), host) {
        (Ok(a), Some(h)) if a.ip().is_unspecified() && !h.is_empty() => {
            format!("{h}:{}", a.port())
        }
        _ => addr.to_owned(),
    }
}

/// The machine's name (Linux), if it can be read.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
}

impl SaleMonitor {
    pub fn new(cx: Context) -> Self {
        SaleMonitor {
            pending: Mutex::new(HashMap::new()),
            started_at: Utc::now(),
            shown_addr: shown_addr(&cx.config.http_addr, host_name().as_deref()),
            checks: tokio::sync::Mutex::new(None),
            cx,
        }
    }

    /// Each dependency's verdict (see [`check_dependencies`]), at most
    /// `max_age` old: one check at a time serves every caller, so a crowd
    /// or a balancer polling `/readyz` costs a database, cache and broker
    /// round trip a `max_age`, not one a request.
    pub async fn dependency_checks(&self, max_age: Duration) -> BTreeMap<String, String> {
        let mut last = self.checks.lock().await;
        if let Some((at, checks)) = &*last {
            if at.elapsed() <= max_age {
                return checks.clone();
            }
        }
        let limit = Duration::from_millis(self.cx.config.health_check_timeout_ms);
        let fresh = check_dependencies(&self.cx.ports, limit).await;
        *last = Some((std::time::Instant::now(), fresh.clone()));
        fresh
    }

    /// Counts one refused token or order request of a promo. Bad input
    /// (`invalid`) and an unknown promo (`not_found`) are not the promo's
    /// refusals, and are answered before (or by) its lookup: counted, any
    /// caller could make shared counters for promo ids that do not exist.
    pub fn refused(&self, promo: PromoId, reason: &'static str) {
        if matches!(reason, "invalid" | "not_found") {
            return;
        }
        *self.pending.lock().entry((promo, reason)).or_insert(0) += 1;
    }

    /// Adds the counts since the last flush to the shared counters. On
    /// failure they are kept for the next flush.
    pub async fn flush(&self) -> ServiceResult<()> {
        let pending = std::mem::take(&mut *self.pending.lock());
        let mut by_promo: HashMap<PromoId, Vec<(&'static str, i64)>> = HashMap::new();
        for ((promo, reason), n) in pending {
            by_promo.entry(promo).or_default().push((reason, n));
        }
        let mut failed = None;
        for (promo, deltas) in by_promo {
            let added = self
                .cx
                .ports
                .kv
                .hash_add(&refused_key(promo), &deltas, SHARED_TTL)
                .await;
            if let Err(e) = added {
                let mut p = self.pending.lock();
                for (reason, n) in deltas {
                    *p.entry((promo, reason)).or_insert(0) += n;
                }
                failed = Some(e);
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// A promo's refusals by reason, the whole cluster's (as of each
    /// instance's last flush).
    pub async fn refusals(&self, promo: PromoId) -> ServiceResult<HashMap<String, i64>> {
        let all = self.cx.ports.kv.hash_get_all(&refused_key(promo)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(k, v)| v.parse::<i64>().ok().map(|n| (k, n)))
            .collect())
    }

    /// Writes this instance's heartbeat; none while it does not own its
    /// node id, which keys the entry (another process holds it, and its
    /// entry is that one's).
    pub async fn beat(&self, checks: BTreeMap<String, String>) -> ServiceResult<()> {
        if !self.cx.ids.owns_node() {
            return Ok(());
        }
        let beat = InstanceBeat {
            node_id: self.cx.ids.node(),
            http_addr: self.shown_addr.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: self.started_at,
            seen_at: Utc::now(),
            checks,
        };
        let json =
            serde_json::to_string(&beat).map_err(|e| super::ServiceError::Internal(Box::new(e)))?;
        self.cx
            .ports
            .kv
            .hash_set(INSTANCES_KEY, &beat.node_id.to_string(), &json, SHARED_TTL)
            .await?;
        Ok(())
    }

    /// Takes this instance off the registry (graceful shutdown), unless it
    /// does not own its node id (the entry would be another's).
    pub async fn leave(&self) -> ServiceResult<()> {
        if !self.cx.ids.owns_node() {
            return Ok(());
        }
        let node = self.cx.ids.node().to_string();
        self.cx.ports.kv.hash_delete(INSTANCES_KEY, &node).await?;
        Ok(())
    }

    /// Every instance that wrote a heartbeat lately; those silent for longer
    /// than `stale_after` are marked stale, and dropped after ten times that.
    pub async fn instances(&self, stale_after: Duration) -> ServiceResult<Vec<InstanceStatus>> {
        let now = Utc::now();
        let stale_after = chrono::Duration::from_std(stale_after).unwrap_or_default();
        let mut out: Vec<InstanceStatus> = self
            .cx
            .ports
            .kv
            .hash_get_all(INSTANCES_KEY)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str::<InstanceBeat>(&v).ok())
            .filter(|b| now - b.seen_at < stale_after * 10)
            .map(|beat| InstanceStatus {
                stale: now - beat.seen_at > stale_after,
                beat,
            })
            .collect();
        out.sort_by(|a, b| a.beat.http_addr.cmp(&b.beat.http_addr));
        Ok(out)
    }
}

/// Keeps the monitor's shared figures fresh: every `period`, flush the
/// refusal counts and write a heartbeat with the readiness verdicts.
pub async fn run_heartbeat(monitor: Arc<SaleMonitor>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = monitor.flush().await {
            tracing::debug!(error = %e, "refusal counts not flushed; kept for the next beat");
        }
        // Fresh unless `/readyz` just took them.
        let checks = monitor.dependency_checks(period / 2).await;
        if let Err(e) = monitor.beat(checks).await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
    }
}

/// Asks each dependency (DB, cache, message bus) to answer within `limit`
/// (`health_check_timeout_ms`): "ok" or "down: why".
pub async fn check_dependencies(p: &Ports, limit: Duration) -> BTreeMap<String, String> {
    let (db, cache, bus) = tokio::join!(
        tokio::time::timeout(limit, p.store.ping()),
        tokio::time::timeout(limit, async {
            p.ledger.ping().await?;
            p.kv.ping().await
        }),
        tokio::time::timeout(limit, p.bus.ping()),
    );
    fn verdict<E: std::fmt::Display>(
        r: Result<Result<(), E>, tokio::time::error::Elapsed>,
        limit: Duration,
    ) -> String {
        match r {
            Ok(Ok(())) => "ok".into(),
            Ok(Err(e)) => format!("down: {e}"),
            Err(_) => format!("down: no answer within {} ms", limit.as_millis()),
        }
    }
    BTreeMap::from([
        ("database".to_owned(), verdict(db, limit)),
        ("cache".to_owned(), verdict(cache, limit)),
        ("message_bus".to_owned(), verdict(bus, limit)),
    ])
}

#[cfg(test)]
mod tests {
    use super::shown_addr;

    #[test]
    fn an_unspecified_address_is_shown_with_the_machines_name() {
        assert_eq!(shown_addr("0.0.0.0:8080", Some("web-3")), "web-3:8080");
        assert_eq!(shown_addr("[::]:8081", Some("web-3")), "web-3:8081");
        assert_eq!(shown_addr("0.0.0.0:8080", None), "0.0.0.0:8080");
        assert_eq!(shown_addr("0.0.0.0:8080", Some("")), "0.0.0.0:8080");
        assert_eq!(shown_addr("10.0.0.7:8080", Some("web-3")), "10.0.0.7:8080");
    }
}
