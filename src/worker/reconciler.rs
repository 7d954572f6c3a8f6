//! The reconciler: what no request and no message may be trusted to finish.
//! Each pass, in every instance (each step is idempotent, so instances may
//! run them at once):
//!
//! 1. replays stock deductions of committed rows that never ran (the
//!    `stock_log` table is the outbox);
//! 2. settles rows left `init` longer than `reconcile_after_secs` — a crash
//!    between the journal row and the local transaction, or a half message
//!    the broker gave up checking back: flipped to `rolled_back` unless the
//!    order committed meanwhile (the DB's conditional update decides the
//!    race), and the reservation given back;
//! 3. cancels unpaid orders `reconcile_after_secs` past their payment time
//!    (the delayed message normally did it first);
//! 4. for each promo on sale or ended less than `ledger_sweep_after_end_secs`
//!    ago (and never less than the payment time-out and the unpaid sweep
//!    need to cancel its last orders; only the promos published under
//!    write-behind, whatever this instance sells with — a promo with no
//!    strategy recorded, only by write-behind instances), holds every
//!    reservation record of the ledger against its journal row: `committed` — the record is dropped (the
//!    units stay sold, the buyer recorded); `rolled_back` — given back now
//!    (a give-back that failed when the cache did: a rolled-back row is
//!    never looked at again otherwise, and its buyer would stay recorded);
//!    `init` — left alone (in flight, or step 2's); and gives back the
//!    units of every cancelled order the ledger never got back (the
//!    cancellation's give-back failed, or its instance died first: nothing
//!    else calls it again);
//! 5. for each such promo on sale: rebuilds a ledger the cache
//!    lost, and compares the ledger's stock with the DB's — DB stock less
//!    the units reserved and not yet deducted. A difference that stays the
//!    same while nothing in the sale moves for `ledger_rebuild_quiet_ms`
//!    (two passes) is drift — a reservation not given back when the cache
//!    failed, say — and is repaired with a compare-and-set on the ledger's
//!    level (its stock and version: an instance that stalled after its look
//!    cannot repair a ledger another instance repaired and a sale brought
//!    back to the same stock), one audit log line per repair. A moving sale is never "repaired":
//!    its differences are reservations in flight. Nor is a promo whose
//!    sweep (step 4) found a rolled-back record it could not give back this
//!    pass: repairing the stock and later giving the record back would
//!    count its units twice.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::cache::LedgerLevel;
use crate::domain::{Promo, PromoId, PromoState, StockLogId, StockLogStatus};
use crate::service::{catalog, payment, write_behind, Context};

/// A promo whose ledger and DB disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub promo_id: PromoId,
    /// The ledger's stock.
    pub ledger: i64,
    /// DB stock − units reserved and not yet deducted.
    pub expected: i64,
    /// Repaired in this pass (the difference held still long enough).
    pub repaired: bool,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Committed rows whose deduction never ran, replayed now.
    pub replayed: usize,
    pub stale: usize,
    pub rolled_back: usize,
    pub already_committed: usize,
    pub released: usize,
    /// Unpaid orders past their time cancelled by the sweep.
    pub unpaid_cancelled: usize,
    /// Unpaid orders past their time the sweep could not cancel (tried next
    /// pass); 1 as well when the sweep could not list them.
    pub unpaid_failed: usize,
    /// Reservation records of committed orders dropped from the ledgers.
    pub records_forgotten: usize,
    /// Rolled-back reservations still held by a ledger (a give-back that
    /// failed), given back now.
    pub stranded_given_back: usize,
    /// Rolled-back reservations still held and not given back by this pass:
    /// the give-back failed again (tried next pass), or a dry run.
    pub stranded_pending: usize,
    /// Cancelled orders whose units the ledger never got back (the
    /// cancellation's give-back failed, or its instance died first), given
    /// back now.
    pub restocks_given_back: usize,
    /// Such cancellations not given back by this pass: the give-back failed
    /// again (tried next pass), or a dry run.
    pub restocks_pending: usize,
    /// Promos whose sweep failed this pass (Redis or the DB did not answer;
    /// tried next pass, and no drift repair for them this pass).
    pub sweeps_failed: usize,
    /// Promos on sale whose ledger was missing (a rebuild was started).
    pub ledgers_missing: usize,
    /// Promos whose ledger disagrees with the DB.
    pub drifts: Vec<Drift>,
}

impl ReconcileReport {
    /// Drifts seen but not repaired yet (they need a second, still look).
    pub fn drifts_pending(&self) -> usize {
        self.drifts.iter().filter(|d| !d.repaired).count()
    }
}

/// Everything that moves when a sale moves, read DB first, ledger last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observation {
    db_stock: i64,
    unsettled: i64,
    stock_logs: (i64, i64, i64),
    orders: i64,
    /// The ledger's stock and version: a reservation and its give-back
    /// between two looks move the version, not the stock.
    ledger: LedgerLevel,
}

/// Keeps what earlier passes saw (drift needs two looks).
#[derive(Default)]
pub struct Reconciler {
    seen: HashMap<PromoId, (Observation, Instant)>,
    /// Committed `stock_log` rows written before this were all deducted at
    /// an earlier look: later passes look from here, with a margin.
    deducted_before: Option<DateTime<Utc>>,
    /// When the last look over every committed row was.
    last_full_look: Option<Instant>,
}

/// How often a pass looks over every committed row again, whatever its
/// mark says (a row written by an instance whose clock was far behind).
const FULL_LOOK_EVERY: Duration = Duration::from_secs(3600);

/// How far behind a pass's look its mark stays, at least.
const MARK_MARGIN: Duration = Duration::from_secs(600);

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// One pass (see the module docs). With `dry_run`, only counts and
    /// reports; nothing changes.
    pub async fn pass(&mut self, cx: &Context, dry_run: bool) -> anyhow::Result<ReconcileReport> {
        let full = self
            .last_full_look
            .is_none_or(|at| at.elapsed() >= FULL_LOOK_EVERY);
        let since = match self.deducted_before {
            Some(mark) if !full => mark,
            _ => DateTime::<Utc>::UNIX_EPOCH,
        };
        let (mut report, looked_until) = settle_journal(cx, since, dry_run).await?;
        if let Some(until) = looked_until {
            // A row is stamped with its writer's clock, before its
            // transaction's waits, and seen once it commits: the mark stays
            // well behind (ten minutes, or the order's bound and a minute
            // when longer) for a late commit and a clock a little off; a
            // clock further off is met by the hourly look over every row.
            let margin = chrono::Duration::from_std(
                MARK_MARGIN.max(cx.config.order_in_flight_bound() + Duration::from_secs(60)),
            )
            .unwrap_or(chrono::Duration::MAX);
            self.deducted_before = until.checked_sub_signed(margin);
            if full {
                self.last_full_look = Some(Instant::now());
            }
        }
        if !dry_run {
            let grace = Duration::from_secs(cx.config.reconcile_after_secs);
            // A sweep that fails (the DB did not answer) stops no ledger
            // step after it: they are the sale's, it is the payments'.
            match payment::sweep(cx, grace, 1000).await {
                Ok((cancelled, failed)) => {
                    report.unpaid_cancelled = cancelled;
                    report.unpaid_failed = failed;
                }
                Err(e) => {
                    report.unpaid_failed += 1;
                    tracing::warn!(error = %e, "reconciler: unpaid-order sweep failed; next pass");
                }
            }
        }
        let here = cx.config.order_strategy;
        let now = Utc::now();
        let swept_until = chrono::Duration::from_std(cx.config.ledger_sweep_after_end())
            .unwrap_or(chrono::Duration::MAX);
        // Every sale still kept: published, ended less than the sweep's
        // time ago (page by page, however many promos came after it).
        let ended_after = now
            .checked_sub_signed(swept_until)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let mut kept: Vec<Promo> = Vec::new();
        loop {
            const PAGE: u32 = 1000;
            let after = kept.last().map_or(PromoId(0), |p| p.id);
            let page = cx
                .ports
                .store
                .published_promos_ending_after(ended_after, after, PAGE)
                .await?;
            let last = page.len() < PAGE as usize;
            kept.extend(page);
            if last {
                break;
            }
        }
        let published: Vec<Promo> = kept
            .into_iter()
            .filter(|p| {
                // The promo's strategy decides, not this instance's: a
                // pure-DB instance beside write-behind ones (or restarted
                // from one) cancels write-behind orders too, and its
                // give-back that failed is its own sweep's to make; it
                // rebuilds and repairs those ledgers as a write-behind
                // instance does (shared, idempotent steps). A promo
                // published under a pure-DB strategy has a ledger nobody
                // keeps (warmed at publish, never told of its sales):
                // nothing to sweep, nothing to repair.
                p.sold_with_ledger(here)
            })
            .collect();
        let unsettled = sweep_reservations(cx, &published, dry_run, &mut report).await;
        let live = published
            .into_iter()
            .filter(|p| p.state_at(now) != PromoState::Ended && !unsettled.contains(&p.id))
            .collect();
        self.check_ledgers(cx, live, dry_run, &mut report).await?;
        Ok(report)
    }

    async fn check_ledgers(
        &mut self,
        cx: &Context,
        live: Vec<Promo>,
        dry_run: bool,
        report: &mut ReconcileReport,
    ) -> anyhow::Result<()> {
        let ports = &cx.ports;
        self.seen.retain(|id, _| live.iter().any(|p| p.id == *id));
        let quiet = Duration::from_millis(cx.config.ledger_rebuild_quiet_ms);
        for promo in live {
            let item = ports.store.item(promo.item_id).await?;
            let unsettled = ports.store.unsettled_units_of_item(promo.item_id).await?;
            let totals = ports.store.promo_totals(promo.id).await?;
            let Some(item) = item else { continue };
            let Some(level) = ports.ledger.level(promo.id).await? else {
                report.ledgers_missing += 1;
                self.seen.remove(&promo.id);
                if !dry_run {
                    cx.recovery.trigger(cx, promo.id);
                }
                continue;
            };
            let seen = Observation {
                db_stock: item.stock,
                unsettled,
                stock_logs: (
                    totals.stock_log_init,
                    totals.stock_log_committed,
                    totals.stock_log_rolled_back,
                ),
                orders: totals.orders,
                ledger: level,
            };
            let ledger = level.stock;
            let expected = (item.stock - unsettled).max(0);
            if expected == ledger {
                self.seen.remove(&promo.id);
                continue;
            }
            let held = match self.seen.get(&promo.id) {
                Some((before, since)) if *before == seen => since.elapsed() >= quiet,
                _ => {
                    self.seen.insert(promo.id, (seen, Instant::now()));
                    false
                }
            };
            // A journal row still `init` may or may not hold its reservation
            // (the row comes first: an instance killed between the two left
            // none), so what the ledger should hold is not known until the
            // stale-row step settles it: no repair before.
            let held = held && totals.stock_log_init == 0;
            let mut drift = Drift {
                promo_id: promo.id,
                ledger,
                expected,
                repaired: false,
            };
            if held && !dry_run && cx.recovery.is_running(promo.id) {
                // A rebuild of this promo is under way here: leave it be.
            } else if held && !dry_run {
                if ports
                    .ledger
                    .adjust(promo.id, level, expected - ledger)
                    .await?
                {
                    drift.repaired = true;
                    self.seen.remove(&promo.id);
                    if expected > ledger {
                        // Units the ledger had lost are on sale again: the
                        // gate, which the crowd may have spent, gets room
                        // for their tokens as for units given back.
                        payment::back_on_sale(cx, promo.id, Some(expected - ledger)).await;
                    } else if expected > 0 {
                        cx.sold_out.clear(promo.id);
                    }
                    metrics::counter!("seckill_ledger_drift_repairs_total").increment(1);
                    tracing::warn!(
                        promo_id = %promo.id,
                        ledger_before = ledger,
                        ledger_after = expected,
                        db_stock = item.stock,
                        unsettled,
                        "audit: reconciler repaired the promo's ledger drift (ledger = DB stock − unsettled units)"
                    );
                }
            } else if !held {
                tracing::info!(promo_id = %promo.id, ledger, expected,
                    "ledger and DB differ; repaired if it holds still for the quiet time");
            }
            report.drifts.push(drift);
        }
        Ok(())
    }
}

/// Step 4: each reservation record of `promos`' ledgers held against its
/// journal row, and each cancelled order against the ledger's given-back
/// set (see the module docs). The promos left with a rolled-back record or
/// a cancellation not given back, or whose sweep failed, are returned: no
/// drift repair for them this pass.
async fn sweep_reservations(
    cx: &Context,
    promos: &[Promo],
    dry_run: bool,
    report: &mut ReconcileReport,
) -> HashSet<PromoId> {
    let mut unsettled = HashSet::new();
    for promo in promos {
        let swept = async {
            let records = sweep_promo(cx, promo.id, dry_run, report).await?;
            let restocks = sweep_restocks(cx, promo.id, dry_run, report).await?;
            anyhow::Ok(records && restocks)
        }
        .await;
        match swept {
            Ok(true) => {}
            Ok(false) => {
                unsettled.insert(promo.id);
            }
            Err(e) => {
                // One promo's failure stops neither the others nor the
                // ledger checks after the sweep.
                report.sweeps_failed += 1;
                unsettled.insert(promo.id);
                tracing::warn!(promo_id = %promo.id, error = %format!("{e:#}"),
                    "reservation sweep failed; next pass");
            }
        }
    }
    metrics::counter!("seckill_reconciled_total", "outcome" => "stranded_given_back")
        .increment(report.stranded_given_back as u64);
    metrics::counter!("seckill_reconciled_total", "outcome" => "restock_given_back")
        .increment(report.restocks_given_back as u64);
    unsettled
}

/// One promo's sweep: false when a rolled-back record is left held, or the
/// look at the records did not reach them all.
async fn sweep_promo(
    cx: &Context,
    promo: PromoId,
    dry_run: bool,
    report: &mut ReconcileReport,
) -> anyhow::Result<bool> {
    let ledger = &cx.ports.ledger;
    let page = ledger
        .reservations(promo, cx.config.ledger_sweep_max_records)
        .await?;
    // A look cut off at its bound may have missed a rolled-back record
    // still held: its unit is missing from the ledger (drift) and comes back
    // when a later pass reaches it, so a repair made meanwhile would count
    // it twice. Only a complete look settles the promo.
    let mut settled = page.complete;
    for chunk in page.ids.chunks(1000) {
        let statuses = cx.ports.store.stock_log_statuses(chunk).await?;
        let committed: Vec<_> = statuses
            .iter()
            .filter(|(_, s)| *s == StockLogStatus::Committed)
            .map(|(id, _)| *id)
            .collect();
        let rolled_back = statuses
            .iter()
            .filter(|(_, s)| *s == StockLogStatus::RolledBack)
            .map(|(id, _)| *id);
        if dry_run {
            report.records_forgotten += committed.len();
            report.stranded_pending += rolled_back.count();
            continue;
        }
        ledger.forget_committed(promo, &committed).await?;
        report.records_forgotten += committed.len();
        for id in rolled_back {
            match ledger.release(promo, id).await {
                Ok(units) => {
                    if units > 0 {
                        report.stranded_given_back += 1;
                        // Stranded: nobody is answered for it any more.
                        payment::back_on_sale(cx, promo, Some(units)).await;
                        tracing::warn!(promo_id = %promo, stock_log_id = %id,
                            "audit: reconciler gave back a rolled-back reservation the ledger still held");
                    }
                }
                Err(e) => {
                    report.stranded_pending += 1;
                    settled = false;
                    tracing::warn!(promo_id = %promo, stock_log_id = %id, error = %e,
                        "rolled-back reservation still not given back; next pass");
                }
            }
        }
    }
    Ok(settled)
}

/// One promo's cancelled orders whose units the ledger never got back (the
/// cancellation's give-back failed, or its instance died between the DB's
/// cancel and the give-back: nothing else calls it again), given back now —
/// idempotent per order, like the cancellation's own call. A pass compares
/// the ledger's given-back count with the DB's count of cancelled orders
/// first; unless they are equal, it looks at every cancelled order of the
/// promo, a page of `ledger_sweep_max_records` at a time: drift repair of
/// the promo, after the sweep, must never make up units a later give-back
/// would add again. False when one could not be given back.
async fn sweep_restocks(
    cx: &Context,
    promo: PromoId,
    dry_run: bool,
    report: &mut ReconcileReport,
) -> anyhow::Result<bool> {
    // The usual pass: every cancellation given back. The ledger's given-back
    // set holds only cancelled orders' ids, each once, and cancelled orders
    // stay cancelled: read first, a set as large as the DB's count read
    // after holds every order cancelled by then. Not loaded: a rebuild
    // loads every cancelled order as given back.
    let Some(given_back) = cx.ports.ledger.restocked_count(promo).await? else {
        return Ok(true);
    };
    let cancelled = cx.ports.store.cancelled_order_count(promo).await?;
    if given_back == cancelled {
        return Ok(true);
    }
    if given_back > cancelled {
        // Not from this system's own writes: a DB restored or reset under
        // a kept ledger. Every order is looked at, not trusted to a count.
        tracing::warn!(promo_id = %promo, given_back, cancelled,
            "ledger holds more cancellations given back than the DB has cancelled orders");
    }
    let page = cx.config.ledger_sweep_max_records.max(1);
    let mut after = String::new();
    let mut settled = true;
    loop {
        let cancelled = cx
            .ports
            .store
            .cancelled_orders(promo, &after, u32::try_from(page).unwrap_or(u32::MAX))
            .await?;
        let Some((last, _, _)) = cancelled.last() else {
            break;
        };
        after = last.0.clone();
        for chunk in cancelled.chunks(1000) {
            let ids: Vec<StockLogId> = chunk.iter().map(|(_, id, _)| *id).collect();
            let missing: HashSet<StockLogId> = cx
                .ports
                .ledger
                .not_restocked(promo, &ids)
                .await?
                .into_iter()
                .collect();
            if dry_run {
                report.restocks_pending += missing.len();
                continue;
            }
            for (_, id, amount) in chunk.iter().filter(|(_, id, _)| missing.contains(id)) {
                match cx.ports.ledger.restock(promo, *id, *amount).await {
                    Ok(true) => {
                        report.restocks_given_back += 1;
                        payment::back_on_sale(cx, promo, Some(*amount)).await;
                        tracing::warn!(promo_id = %promo, stock_log_id = %id, amount,
                            "audit: reconciler gave back a cancelled order's units the ledger never got");
                    }
                    // Given back meanwhile (the cancellation's own call), or
                    // the ledger is gone (a rebuild loads it as given back).
                    Ok(false) => {}
                    Err(e) => {
                        report.restocks_pending += 1;
                        settled = false;
                        tracing::warn!(promo_id = %promo, stock_log_id = %id, error = %e,
                            "cancelled order's units still not given back to the ledger; next pass");
                    }
                }
            }
        }
        if cancelled.len() < page {
            break;
        }
    }
    Ok(settled)
}

/// Steps 1 and 2: replays lost deductions (of committed rows written since
/// `since`) and settles stale `init` rows. With the report, the instant
/// before which every committed row written since `since` is now deducted,
/// when this pass made sure of it.
async fn settle_journal(
    cx: &Context,
    since: DateTime<Utc>,
    dry_run: bool,
) -> anyhow::Result<(ReconcileReport, Option<DateTime<Utc>>)> {
    const PAGE: u32 = 1000;
    let before = Utc::now() - chrono::Duration::seconds(cx.config.reconcile_after_secs as i64);
    let stale = cx.ports.store.stale_stock_logs(before, PAGE).await?;
    let undeducted = cx
        .ports
        .store
        .undeducted_stock_logs(since, before, PAGE)
        .await?;
    let mut looked_until = (!dry_run && undeducted.len() < PAGE as usize).then_some(before);
    let mut report = ReconcileReport {
        stale: stale.len(),
        replayed: undeducted.len(),
        ..Default::default()
    };
    if dry_run {
        return Ok((report, None));
    }
    if !undeducted.is_empty() {
        // The stock consumer may deduct the same rows at the same time (a
        // backlog after a broker restart): one of the two then fails on the
        // deduction's key and is rolled back. A failed replay waits for the
        // next pass; the rest of this one goes on.
        match cx.ports.store.apply_deductions(&undeducted).await {
            Ok(r) => tracing::warn!(
                rows = undeducted.len(),
                applied = r.applied,
                "reconciler: replayed stock deductions that never ran"
            ),
            Err(e) => {
                report.replayed = 0;
                looked_until = None;
                tracing::warn!(rows = undeducted.len(), error = %e,
                    "reconciler: replay of stock deductions failed (the consumer's at the same time?); next pass")
            }
        }
    }
    if stale.is_empty() {
        return Ok((report, looked_until));
    }
    let ids: Vec<_> = stale.iter().map(|(id, _)| *id).collect();
    let statuses = cx.ports.store.roll_back_stock_logs(&ids).await?;
    for (id, promo) in stale {
        match statuses.iter().find(|(i, _)| *i == id).map(|(_, s)| *s) {
            Some(StockLogStatus::RolledBack) => {
                report.rolled_back += 1;
                // A failed give-back stops no other row: the sweep of
                // reservation records gives it back on a later pass.
                if let Some(units) = write_behind::give_back(cx, promo, id).await {
                    let released = units > 0;
                    report.released += usize::from(released);
                    if released {
                        // Nobody is answered for this row any more (its
                        // instance died): back on sale for anyone, the
                        // gate reopened for the units as a cancellation's.
                        catalog::reopen_gate(cx, promo, units).await;
                    }
                    tracing::warn!(stock_log_id = %id, promo_id = %promo, released,
                        "reconciler: stale reservation rolled back (released: its units given back; else none were held)");
                }
            }
            Some(StockLogStatus::Committed) => report.already_committed += 1,
            _ => {}
        }
    }
    metrics::counter!("seckill_reconciled_total", "outcome" => "rolled_back")
        .increment(report.rolled_back as u64);
    Ok((report, looked_until))
}

/// One pass with no memory of earlier ones (drift is reported, and
/// repaired only by a later pass of the same [`Reconciler`]).
pub async fn reconcile_once(cx: &Context, dry_run: bool) -> anyhow::Result<ReconcileReport> {
    Reconciler::new().pass(cx, dry_run).await
}

/// Runs passes forever, every `reconcile_interval_secs`.
pub async fn run(cx: Context) {
    let every = Duration::from_secs(cx.config.reconcile_interval_secs.max(1));
    let mut reconciler = Reconciler::new();
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = reconciler.pass(&cx, false).await {
            tracing::warn!(error = %format!("{e:#}"), "reconciler pass failed; retrying next interval");
        }
    }
}
