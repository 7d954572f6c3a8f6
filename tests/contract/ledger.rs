//! The stock ledger contract.

use std::future::Future;
use std::sync::Arc;

use seckill::cache::{LedgerLevel, Reservation, ReserveOutcome, StockLedger};
use seckill::domain::{PromoId, SaleJournal, StockLogId, UserId};

static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

/// A promo id no other test of this process uses.
fn fresh_promo() -> PromoId {
    PromoId(
        std::process::id() as i64 * 1_000_000
            + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    )
}

fn r(promo: PromoId, user: i64, amount: i64, id: i64) -> Reservation {
    Reservation {
        promo,
        user: UserId(user),
        amount,
        id: StockLogId(id),
    }
}

pub async fn suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn StockLedger>>,
{
    reserves_until_sold_out_and_flags_it(make().await).await;
    enforces_the_per_user_limit(make().await).await;
    refuses_a_promo_that_is_not_warmed(make().await).await;
    release_is_the_exact_inverse_once(make().await).await;
    restock_gives_units_back_once_and_keeps_the_buyer(make().await).await;
    warming_again_does_not_reset_a_running_sale(make().await).await;
    concurrent_reservations_never_oversell(make().await).await;
    a_rebuilt_ledger_holds_the_journal_and_loads_once(make().await).await;
    adjust_is_a_compare_and_set_on_the_level(make().await).await;
    every_change_moves_the_version_and_a_look_does_not(make().await).await;
    an_untouched_ledger_is_warmed_afresh(make().await).await;
    a_reservation_the_ledger_holds_is_not_taken_twice(make().await).await;
    reservation_records_are_listed_and_committed_ones_forgotten(make().await).await;
    cancellations_not_given_back_are_told_apart(make().await).await;
}

async fn cancellations_not_given_back_are_told_apart(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    let ids = [StockLogId(9), StockLogId(10), StockLogId(11)];
    assert!(
        l.not_restocked(p, &ids).await.unwrap().is_empty(),
        "not loaded: a rebuild loads every cancellation as given back"
    );
    assert_eq!(l.restocked_count(p).await.unwrap(), None, "not loaded");
    assert!(l.warm(p, 2, 1).await.unwrap());
    assert_eq!(l.restocked_count(p).await.unwrap(), Some(0));
    assert!(l.restock(p, StockLogId(10), 1).await.unwrap());
    assert!(!l.restock(p, StockLogId(10), 1).await.unwrap());
    assert_eq!(
        l.restocked_count(p).await.unwrap(),
        Some(1),
        "each cancellation counted once"
    );
    let mut missing = l.not_restocked(p, &ids).await.unwrap();
    missing.sort();
    assert_eq!(missing, vec![StockLogId(9), StockLogId(11)]);
    let level = l.level(p).await.unwrap();
    assert!(l.not_restocked(p, &[]).await.unwrap().is_empty());
    assert_eq!(l.level(p).await.unwrap(), level, "a look changes nothing");
}

async fn reservation_records_are_listed_and_committed_ones_forgotten(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    let none = l.reservations(p, 100).await.unwrap();
    assert!(none.ids.is_empty() && none.complete, "not loaded: {none:?}");
    assert!(l.warm(p, 5, 2).await.unwrap());
    l.reserve(&[r(p, 1, 1, 1), r(p, 2, 1, 2)]).await.unwrap();
    let mut all = l.reservations(p, 100).await.unwrap();
    all.ids.sort();
    assert_eq!(all.ids, vec![StockLogId(1), StockLogId(2)]);
    assert!(all.complete);
    let exact = l.reservations(p, 2).await.unwrap();
    assert!(exact.ids.len() == 2 && exact.complete, "{exact:?}");
    let cut = l.reservations(p, 1).await.unwrap();
    assert_eq!(cut.ids.len(), 1, "at most max");
    assert!(!cut.complete, "one of two is not all of them");
    // Id 1 committed: its record goes, its unit stays sold and its buyer
    // recorded; a give-back of it is a no-op.
    l.forget_committed(p, &[StockLogId(1)]).await.unwrap();
    let left = l.reservations(p, 100).await.unwrap();
    assert_eq!((left.ids, left.complete), (vec![StockLogId(2)], true));
    assert_eq!(l.stock(p).await.unwrap(), Some(3));
    assert!(l.release(p, StockLogId(1)).await.unwrap() == 0);
    assert_eq!(l.stock(p).await.unwrap(), Some(3));
    let out = l.reserve(&[r(p, 1, 2, 3)]).await.unwrap();
    assert_eq!(out, vec![ReserveOutcome::AlreadyBought], "the buyer stays");
    assert!(
        !l.warm(p, 100, 2).await.unwrap(),
        "a sale with only forgotten records is still going"
    );
    assert!(l.release(p, StockLogId(2)).await.unwrap() > 0);
    assert_eq!(l.stock(p).await.unwrap(), Some(4));
    l.forget_committed(p, &[]).await.unwrap();
}

async fn a_reservation_the_ledger_holds_is_not_taken_twice(l: Arc<dyn StockLedger>) {
    // A batch journals its rows, the ledger is lost and rebuilt from the
    // journal (the row is an open reservation there), then the batch's
    // reservation arrives: it is the same reservation, not a second one.
    let p = fresh_promo();
    let journal = SaleJournal {
        db_stock: 5,
        unsettled: 1,
        open: vec![(StockLogId(7), UserId(1), 1)],
        buyers: vec![(UserId(1), 1)],
        restocked: vec![],
    };
    assert!(l.rebuild(p, 1, &journal).await.unwrap());
    assert_eq!(l.stock(p).await.unwrap(), Some(4));
    let out = l
        .reserve(&[r(p, 1, 1, 7), r(p, 2, 1, 8), r(p, 1, 1, 7)])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            ReserveOutcome::Reserved { remaining: 4 },
            ReserveOutcome::Reserved { remaining: 3 },
            ReserveOutcome::Reserved { remaining: 3 }
        ]
    );
    assert_eq!(l.stock(p).await.unwrap(), Some(3));
    // Given back once, it is the buyer's again to take (a new id).
    assert!(l.release(p, StockLogId(7)).await.unwrap() > 0);
    assert!(l.release(p, StockLogId(7)).await.unwrap() == 0);
    assert_eq!(l.stock(p).await.unwrap(), Some(4));
    let out = l.reserve(&[r(p, 1, 1, 9)]).await.unwrap();
    assert_eq!(out, vec![ReserveOutcome::Reserved { remaining: 3 }]);
}

async fn a_rebuilt_ledger_holds_the_journal_and_loads_once(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    // DB stock 10, 3 units unsettled: user 1 holds an undecided
    // reservation (id 7, 2 units), user 2 a committed one, user 3's order
    // (id 9) was cancelled and its unit is back in the DB stock.
    let journal = SaleJournal {
        db_stock: 10,
        unsettled: 3,
        open: vec![(StockLogId(7), UserId(1), 2)],
        buyers: vec![(UserId(1), 2), (UserId(2), 1), (UserId(3), 1)],
        restocked: vec![StockLogId(9)],
    };
    assert!(l.rebuild(p, 2, &journal).await.unwrap());
    assert_eq!(l.stock(p).await.unwrap(), Some(7));
    assert_eq!(
        l.restocked_count(p).await.unwrap(),
        Some(1),
        "the journal's cancellations are loaded as given back"
    );
    assert!(!l.rebuild(p, 2, &journal).await.unwrap(), "loads once");
    assert!(
        !l.warm(p, 100, 2).await.unwrap(),
        "a warm-up does not reset it"
    );
    // The buyers hold: one order a buyer (user 3's cancelled one counts
    // too); a new buyer takes a unit.
    let out = l
        .reserve(&[
            r(p, 1, 1, 20),
            r(p, 2, 1, 21),
            r(p, 3, 1, 22),
            r(p, 4, 1, 23),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            ReserveOutcome::AlreadyBought,
            ReserveOutcome::AlreadyBought,
            ReserveOutcome::AlreadyBought,
            ReserveOutcome::Reserved { remaining: 6 },
        ]
    );
    // The undecided reservation is given back once; the cancelled one is
    // never restocked again.
    assert!(l.release(p, StockLogId(7)).await.unwrap() > 0);
    assert!(l.release(p, StockLogId(7)).await.unwrap() == 0);
    assert!(!l.restock(p, StockLogId(9), 1).await.unwrap());
    assert_eq!(l.stock(p).await.unwrap(), Some(8));
    // A sold-out journal loads sold out.
    let q = fresh_promo();
    let empty = SaleJournal {
        db_stock: 2,
        unsettled: 2,
        ..SaleJournal::default()
    };
    assert!(l.rebuild(q, 1, &empty).await.unwrap());
    assert_eq!(l.stock(q).await.unwrap(), Some(0));
    assert!(l.sold_out(q).await.unwrap());
}

async fn adjust_is_a_compare_and_set_on_the_level(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    let nowhere = LedgerLevel {
        stock: 0,
        version: 0,
    };
    assert!(!l.adjust(p, nowhere, 1).await.unwrap(), "not loaded");
    assert_eq!(l.level(p).await.unwrap(), None);
    assert!(l.warm(p, 0, 1).await.unwrap());
    assert!(l.sold_out(p).await.unwrap());
    let seen = l.level(p).await.unwrap().unwrap();
    assert_eq!(seen.stock, 0);
    let other_stock = LedgerLevel { stock: 1, ..seen };
    assert!(!l.adjust(p, other_stock, 2).await.unwrap(), "stock moved");
    assert!(l.adjust(p, seen, 2).await.unwrap());
    let repaired = l.level(p).await.unwrap().unwrap();
    assert_ne!(repaired.version, seen.version, "a repair moves it on");
    assert!(!l.adjust(p, seen, 2).await.unwrap());
    assert_eq!(l.stock(p).await.unwrap(), Some(2));
    assert!(!l.sold_out(p).await.unwrap(), "flag cleared");
    let seen = l.level(p).await.unwrap().unwrap();
    assert!(l.adjust(p, seen, -3).await.unwrap());
    assert_eq!(l.stock(p).await.unwrap(), Some(0), "never below zero");
    assert!(l.sold_out(p).await.unwrap(), "flag set at zero");
}

/// The ABA a stock-only compare-and-set let through: a reservation and its
/// give-back leave the stock where it was, and a repair decided on the
/// earlier look must be refused.
async fn every_change_moves_the_version_and_a_look_does_not(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    assert!(l.warm(p, 5, 1).await.unwrap());
    let first = l.level(p).await.unwrap().unwrap();
    assert_eq!(
        l.level(p).await.unwrap(),
        Some(first),
        "a look changes nothing"
    );
    // Loaded afresh (nobody bought): past the version it had.
    assert!(l.warm(p, 5, 1).await.unwrap());
    let seen = l.level(p).await.unwrap().unwrap();
    assert_eq!(seen.stock, 5);
    assert!(seen.version > first.version, "{seen:?} after {first:?}");

    l.reserve(&[r(p, 1, 1, 1)]).await.unwrap();
    let reserved = l.level(p).await.unwrap().unwrap();
    assert_ne!(reserved.version, seen.version);
    // The same reservation again is answered from its record: no change.
    l.reserve(&[r(p, 1, 1, 1)]).await.unwrap();
    // A refused one neither (the buyer is at the limit).
    l.reserve(&[r(p, 1, 1, 2)]).await.unwrap();
    assert_eq!(l.level(p).await.unwrap(), Some(reserved));
    assert!(l.release(p, StockLogId(1)).await.unwrap() > 0);
    let back = l.level(p).await.unwrap().unwrap();
    assert_eq!(back.stock, seen.stock, "the stock is where it was");
    assert!(
        back.version != seen.version && back.version != reserved.version,
        "{back:?}"
    );
    assert!(
        !l.adjust(p, seen, 2).await.unwrap(),
        "a repair decided before the sale moved is refused"
    );
    assert_eq!(l.stock(p).await.unwrap(), Some(5));
    // A restock, then a sale of that unit: the stock is where it was.
    assert!(l.restock(p, StockLogId(9), 1).await.unwrap());
    l.reserve(&[r(p, 2, 1, 3)]).await.unwrap();
    assert_eq!(l.stock(p).await.unwrap(), Some(5));
    assert!(
        !l.adjust(p, back, 1).await.unwrap(),
        "a restock moves it too"
    );
    // Reads, and dropping a committed record, are not changes.
    let now = l.level(p).await.unwrap().unwrap();
    l.stock(p).await.unwrap();
    l.sold_out(p).await.unwrap();
    l.reservations(p, 10).await.unwrap();
    l.forget_committed(p, &[StockLogId(3)]).await.unwrap();
    assert_eq!(l.level(p).await.unwrap(), Some(now));
    assert!(l.adjust(p, now, -1).await.unwrap());
    assert_eq!(l.stock(p).await.unwrap(), Some(4));
}

async fn reserves_until_sold_out_and_flags_it(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    assert!(l.warm(p, 3, 5).await.unwrap());
    assert!(!l.sold_out(p).await.unwrap());
    let out = l
        .reserve(&[r(p, 1, 2, 1), r(p, 2, 2, 2), r(p, 3, 1, 3)])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            ReserveOutcome::Reserved { remaining: 1 },
            ReserveOutcome::SoldOut,
            ReserveOutcome::Reserved { remaining: 0 }
        ]
    );
    assert_eq!(l.stock(p).await.unwrap(), Some(0));
    assert!(l.sold_out(p).await.unwrap());
}

async fn enforces_the_per_user_limit(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    l.warm(p, 10, 2).await.unwrap();
    let out = l
        .reserve(&[r(p, 1, 1, 1), r(p, 1, 1, 2), r(p, 2, 3, 4), r(p, 3, 2, 5)])
        .await
        .unwrap();
    assert_eq!(
        out[1],
        ReserveOutcome::AlreadyBought,
        "one order a buyer, even below the limit (the DB's unique key)"
    );
    assert_eq!(
        out[2],
        ReserveOutcome::OverLimit,
        "one order above the limit"
    );
    assert_eq!(out[3], ReserveOutcome::Reserved { remaining: 7 });
    assert_eq!(l.stock(p).await.unwrap(), Some(7));
    // A cancelled order's units come back for sale, not for its buyer.
    assert!(l.restock(p, StockLogId(1), 1).await.unwrap());
    assert_eq!(
        l.reserve(&[r(p, 1, 1, 6)]).await.unwrap(),
        vec![ReserveOutcome::AlreadyBought]
    );
    // A reservation given back (no order came of it) frees its buyer.
    assert_eq!(l.release(p, StockLogId(5)).await.unwrap(), 2);
    assert!(matches!(
        l.reserve(&[r(p, 3, 1, 7)]).await.unwrap()[..],
        [ReserveOutcome::Reserved { .. }]
    ));
}

async fn refuses_a_promo_that_is_not_warmed(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    assert_eq!(
        l.reserve(&[r(p, 1, 1, 1)]).await.unwrap(),
        vec![ReserveOutcome::NotWarmed]
    );
    assert_eq!(l.stock(p).await.unwrap(), None);
    assert!(l.release(p, StockLogId(1)).await.unwrap() == 0);
}

async fn release_is_the_exact_inverse_once(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    l.warm(p, 1, 1).await.unwrap();
    l.reserve(&[r(p, 7, 1, 70)]).await.unwrap();
    assert!(l.sold_out(p).await.unwrap());
    assert_eq!(
        l.release(p, StockLogId(70)).await.unwrap(),
        1,
        "the units given back"
    );
    assert_eq!(l.release(p, StockLogId(70)).await.unwrap(), 0, "idempotent");
    assert!(
        l.release(p, StockLogId(71)).await.unwrap() == 0,
        "unknown reservation: nothing to give back"
    );
    assert_eq!(l.stock(p).await.unwrap(), Some(1));
    assert!(
        !l.sold_out(p).await.unwrap(),
        "the sold-out flag is cleared"
    );
    assert_eq!(
        l.reserve(&[r(p, 7, 1, 72)]).await.unwrap(),
        vec![ReserveOutcome::Reserved { remaining: 0 }],
        "the buyer may buy again"
    );
}

async fn restock_gives_units_back_once_and_keeps_the_buyer(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    l.warm(p, 1, 1).await.unwrap();
    l.reserve(&[r(p, 8, 1, 80)]).await.unwrap();
    assert!(l.restock(p, StockLogId(80), 1).await.unwrap());
    assert!(
        !l.restock(p, StockLogId(80), 1).await.unwrap(),
        "idempotent"
    );
    assert_eq!(l.stock(p).await.unwrap(), Some(1));
    assert!(!l.sold_out(p).await.unwrap());
    assert_eq!(
        l.reserve(&[r(p, 8, 1, 81)]).await.unwrap(),
        vec![ReserveOutcome::AlreadyBought],
        "one order per user"
    );
    assert_eq!(
        l.reserve(&[r(p, 9, 1, 82)]).await.unwrap(),
        vec![ReserveOutcome::Reserved { remaining: 0 }]
    );
}

async fn warming_again_does_not_reset_a_running_sale(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    assert!(l.warm(p, 5, 1).await.unwrap());
    l.reserve(&[r(p, 1, 1, 1)]).await.unwrap();
    assert!(!l.warm(p, 5, 1).await.unwrap());
    assert_eq!(l.stock(p).await.unwrap(), Some(4));
}

async fn an_untouched_ledger_is_warmed_afresh(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    // A publish that failed after its warm-up: loaded, nobody bought.
    assert!(l.warm(p, 9, 1).await.unwrap());
    assert!(l.warm(p, 0, 1).await.unwrap(), "loaded afresh");
    assert_eq!(l.stock(p).await.unwrap(), Some(0));
    assert!(l.sold_out(p).await.unwrap());
    assert!(l.warm(p, 3, 2).await.unwrap());
    assert!(!l.sold_out(p).await.unwrap(), "the old flag is gone");
    assert_eq!(
        l.reserve(&[r(p, 1, 2, 1)]).await.unwrap(),
        vec![ReserveOutcome::Reserved { remaining: 1 }],
        "with the new limit"
    );
    // A reservation given back leaves no sale going: loaded afresh again.
    assert!(l.release(p, StockLogId(1)).await.unwrap() > 0);
    assert!(l.warm(p, 4, 1).await.unwrap());
    assert_eq!(l.stock(p).await.unwrap(), Some(4));
}

async fn concurrent_reservations_never_oversell(l: Arc<dyn StockLedger>) {
    let p = fresh_promo();
    l.warm(p, 50, 1).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let l = l.clone();
            tokio::spawn(async move { l.reserve(&[r(p, i, 1, 1000 + i)]).await.unwrap()[0] })
        })
        .collect();
    let mut reserved = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), ReserveOutcome::Reserved { .. }) {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 50);
    assert_eq!(l.stock(p).await.unwrap(), Some(0));
}
