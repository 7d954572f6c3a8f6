//! The reconciler replays stock deductions of committed rows that never
//! ran (the `stock_log` table is the outbox), and settles rows left `init`
//! — a crash between the journal row and the local transaction, or a half
//! message the broker gave up checking back. A row older than `reconcile_after_secs` is flipped to
//! `rolled_back` unless its order committed meanwhile (the DB's conditional
//! update decides the race), and its reservation is given back. Safe to run
//! in every instance at once: each step is idempotent.

use std::time::Duration;

use chrono::Utc;

use crate::domain::StockLogStatus;
use crate::service::Context;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Committed rows whose deduction never ran, replayed now.
    pub replayed: usize,
    pub stale: usize,
    pub rolled_back: usize,
    pub already_committed: usize,
    pub released: usize,
}

/// One pass over stale rows. With `dry_run`, only counts them.
pub async fn reconcile_once(cx: &Context, dry_run: bool) -> anyhow::Result<ReconcileReport> {
    let before = Utc::now() - chrono::Duration::seconds(cx.config.reconcile_after_secs as i64);
    let stale = cx.ports.store.stale_stock_logs(before, 1000).await?;
    let undeducted = cx.ports.store.undeducted_stock_logs(before, 1000).await?;
    let mut report = ReconcileReport {
        stale: stale.len(),
        replayed: undeducted.len(),
        ..Default::default()
    };
    if dry_run {
        return Ok(report);
    }
    if !undeducted.is_empty() {
        let r = cx.ports.store.apply_deductions(&undeducted).await?;
        tracing::warn!(
            rows = undeducted.len(),
            applied = r.applied,
            "reconciler: replayed stock deductions that never ran"
        );
    }
    if stale.is_empty() {
        return Ok(report);
    }
    let ids: Vec<_> = stale.iter().map(|(id, _)| *id).collect();
    let statuses = cx.ports.store.roll_back_stock_logs(&ids).await?;
    for (id, promo) in stale {
        match statuses.iter().find(|(i, _)| *i == id).map(|(_, s)| *s) {
            Some(StockLogStatus::RolledBack) => {
                report.rolled_back += 1;
                if cx.ports.ledger.release(promo, id).await? {
                    report.released += 1;
                    cx.sold_out.clear(promo);
                }
                tracing::warn!(stock_log_id = %id, promo_id = %promo, "reconciler: stale reservation rolled back and given back");
            }
            Some(StockLogStatus::Committed) => report.already_committed += 1,
            _ => {}
        }
    }
    metrics::counter!("seckill_reconciled_total", "outcome" => "rolled_back")
        .increment(report.rolled_back as u64);
    Ok(report)
}

/// Runs passes forever, every `reconcile_interval_secs`.
pub async fn run(cx: Context) {
    let every = Duration::from_secs(cx.config.reconcile_interval_secs.max(1));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = reconcile_once(&cx, false).await {
            tracing::warn!(error = %format!("{e:#}"), "reconciler pass failed; retrying next interval");
        }
    }
}
