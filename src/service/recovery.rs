//! Rebuilding a promo's stock ledger from the DB when the cache lost it:
//! Redis restarted empty (it keeps nothing on disk), or an embedded process
//! restarted with its in-memory ledger gone.
//!
//! Until the rebuild is done the order path answers 503: a reservation
//! would find no stock loaded. One instance rebuilds (a lease in the shared
//! key/value store); first it waits `ledger_rebuild_quiet_ms`, so that the
//! orders in flight at the loss reach their outcome (every reservation is
//! journalled `init` before it is taken; its local transaction's deadline
//! bounds the rest). Then, from one DB transaction ([`SaleJournal`]):
//! stock = DB stock − units reserved and not yet deducted; the buyers
//! (per-user limit); the undecided reservations, `init` rows (a later
//! rollback gives them back); the cancelled orders (never restocked twice).
//! An `init` row rolled back while the ledger was being written (an order
//! refused by the missing ledger) is given back right after. The gate
//! counter is set again from the rebuilt stock.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use parking_lot::Mutex;

use super::catalog::{gate_key, gate_permits, gate_ttl};
use super::{Context, ServiceError};
use crate::domain::{PromoId, PromoState};

/// The promos this process is rebuilding (at most one task per promo).
#[derive(Default)]
pub struct LedgerRecovery {
    running: Mutex<HashSet<PromoId>>,
}

/// What a rebuild attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildOutcome {
    /// Loaded now, with this stock.
    Rebuilt { stock: i64 },
    /// Another instance holds the lease, or the ledger was loaded meanwhile.
    NotNeeded,
    /// The promo is not published or has ended: nothing to load.
    NotOnSale,
}

impl LedgerRecovery {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a rebuild of `promo`'s ledger in the background unless this
    /// process runs one already. Returns at once.
    pub fn trigger(&self, cx: &Context, promo: PromoId) {
        if !self.running.lock().insert(promo) {
            return;
        }
        let cx = cx.clone();
        tokio::spawn(async move {
            match rebuild(&cx, promo).await {
                Ok(_) => {}
                Err(e) => tracing::error!(promo_id = %promo, error = %format!("{e:#}"),
                    "ledger rebuild failed; retried on the next order or reconciler pass"),
            }
            cx.recovery.running.lock().remove(&promo);
        });
    }

    /// For a caller that found `promo`'s ledger missing: starts the rebuild
    /// and gives the answer to send meanwhile (503).
    pub fn reload(&self, cx: &Context, promo: PromoId) -> ServiceError {
        self.trigger(cx, promo);
        ServiceError::unavailable("the promo's stock is being reloaded; retry shortly")
    }

    /// Whether this process is rebuilding `promo` now.
    pub fn is_running(&self, promo: PromoId) -> bool {
        self.running.lock().contains(&promo)
    }
}

fn lease_key(promo: PromoId) -> String {
    format!("ledger_rebuild:{promo}")
}

/// Rebuilds `promo`'s ledger when it is missing (see the module docs).
pub async fn rebuild(cx: &Context, promo_id: PromoId) -> anyhow::Result<RebuildOutcome> {
    let ports = &cx.ports;
    let quiet = Duration::from_millis(cx.config.ledger_rebuild_quiet_ms);
    let lease_ttl = quiet + Duration::from_secs(60);
    let holder = cx.lease_holder();
    if !ports
        .kv
        .set_if_absent(&lease_key(promo_id), &holder, lease_ttl)
        .await?
    {
        return Ok(RebuildOutcome::NotNeeded);
    }
    let result = rebuild_leased(cx, promo_id, quiet).await;
    if let Err(e) = ports
        .kv
        .delete_if_equals(&lease_key(promo_id), &holder)
        .await
    {
        tracing::warn!(promo_id = %promo_id, error = %e, "rebuild lease not released; it expires");
    }
    result
}

async fn rebuild_leased(
    cx: &Context,
    promo_id: PromoId,
    quiet: Duration,
) -> anyhow::Result<RebuildOutcome> {
    let ports = &cx.ports;
    let Some(promo) = ports.store.promo(promo_id).await? else {
        return Ok(RebuildOutcome::NotOnSale);
    };
    if !promo.published || promo.state_at(Utc::now()) == PromoState::Ended {
        return Ok(RebuildOutcome::NotOnSale);
    }
    if ports.ledger.stock(promo_id).await?.is_some() {
        return Ok(RebuildOutcome::NotNeeded);
    }
    let here = cx.config.order_strategy;
    if !here.keeps_ledger() && promo.sold_with_ledger(here) {
        // A pure-DB instance keeps the ledgers of the write-behind sales
        // it does not sell (the reconciler's ledger steps run everywhere).
        tracing::warn!(promo_id = %promo_id, quiet_ms = quiet.as_millis() as u64,
            "write-behind promo's stock ledger is missing (cache restarted empty?); rebuilding it from the DB (write-behind instances sell from it)");
    } else {
        tracing::warn!(promo_id = %promo_id, quiet_ms = quiet.as_millis() as u64,
            "promo's stock ledger is missing (cache restarted empty?); orders get 503 until it is rebuilt from the DB");
    }
    metrics::counter!("seckill_ledger_rebuilds_total", "phase" => "started").increment(1);
    // The orders in flight at the loss reach their outcome meanwhile.
    tokio::time::sleep(quiet).await;
    let journal = ports.store.sale_journal(promo_id, promo.item_id).await?;
    let stock = journal.ledger_stock();
    if !ports
        .ledger
        .rebuild(promo_id, cx.config.per_user_limit, &journal)
        .await?
    {
        return Ok(RebuildOutcome::NotNeeded);
    }
    // Set whatever is there (a gate that outlived its ledger may be spent):
    // a token request that met the rebuilt ledger without its gate and set
    // it meanwhile hands out again at most the few permits it took.
    ports
        .kv
        .set_counter(
            &gate_key(promo_id),
            gate_permits(&cx.config, stock),
            gate_ttl(&promo),
        )
        .await?;
    if stock > 0 {
        cx.sold_out.clear(promo_id);
    } else {
        cx.sold_out.set(promo_id);
    }
    // An `init` row is a reservation to the rebuilt ledger; one rolled
    // back after the journal was read (its order was refused: the ledger
    // was missing) is given back now. Best effort, after the gate: the
    // rolling-back side gives it back too, after its rollback.
    let open: Vec<_> = journal.open.iter().map(|(id, _, _)| *id).collect();
    match ports.store.stock_log_statuses(&open).await {
        Ok(statuses) => {
            for (id, status) in statuses {
                if status == crate::domain::StockLogStatus::RolledBack {
                    super::write_behind::give_back(cx, promo_id, id).await;
                }
            }
        }
        Err(e) => tracing::warn!(promo_id = %promo_id, error = %e,
            "cannot check the rebuilt reservations against the journal now"),
    }
    metrics::counter!("seckill_ledger_rebuilds_total", "phase" => "done").increment(1);
    tracing::warn!(
        promo_id = %promo_id,
        stock,
        db_stock = journal.db_stock,
        unsettled = journal.unsettled,
        open_reservations = journal.open.len(),
        buyers = journal.buyers.len(),
        cancelled = journal.restocked.len(),
        "audit: promo's stock ledger rebuilt from the DB; orders resume"
    );
    Ok(RebuildOutcome::Rebuilt { stock })
}
