//! Promos: an item sold at a promo price between a start and an end. The
//! state is computed from the clock, never stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{bounded_text, Invalid, ItemId, PromoId};

/// A stored promo.
#[derive(Debug, Clone, PartialEq)]
pub struct Promo {
    pub id: PromoId,
    pub item_id: ItemId,
    pub name: String,
    pub price_cents: i64,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub published: bool,
    /// The item's stock and sales when the promo was published (the ledger's
    /// starting point), and the order strategy it was published under;
    /// `None` until then.
    pub baseline: Option<PromoBaseline>,
}

/// What the DB knows of one promo's sale, read in one transaction: enough
/// to rebuild its ledger when the cache lost it (Redis restarted empty, or
/// an embedded process restarted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaleJournal {
    /// The item's DB stock.
    pub db_stock: i64,
    /// Units of the item's sales not yet settled in `db_stock` (`init`
    /// rows, committed rows not deducted yet).
    pub unsettled: i64,
    /// Undecided orders (`init` rows): (id, user, units). A rebuilt ledger
    /// holds them as reservations (whether or not the lost one had taken
    /// them yet), so that a rollback gives them back.
    pub open: Vec<(crate::domain::StockLogId, crate::domain::UserId, i64)>,
    /// Units per buyer over every reservation not rolled back (the per-user
    /// limit; a cancelled order still counts).
    pub buyers: Vec<(crate::domain::UserId, i64)>,
    /// Reservations of cancelled orders, whose units are back in
    /// `db_stock` already: never to be restocked again.
    pub restocked: Vec<crate::domain::StockLogId>,
}

impl SaleJournal {
    /// A sale before its first order: `stock` units, nobody bought yet (a
    /// promo's warm-up at publish).
    pub fn opening(stock: i64) -> Self {
        SaleJournal {
            db_stock: stock,
            ..SaleJournal::default()
        }
    }

    /// The stock the promo's ledger must hold: the DB stock less what is
    /// reserved and not yet deducted.
    pub fn ledger_stock(&self) -> i64 {
        (self.db_stock - self.unsettled).max(0)
    }
}

/// What a promo's ledger started from: live stock is the ledger's, live
/// sales are `sales + (stock - live stock)`; and how its sale takes stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromoBaseline {
    pub stock: i64,
    pub sales: i64,
    /// The strategy the promo was published under. `None`: published
    /// before promos recorded it (held to the instance's own).
    pub strategy: Option<OrderStrategy>,
}

impl PromoBaseline {
    /// The item's sales when the ledger holds `live_stock`.
    pub fn sales_at(&self, live_stock: i64) -> i64 {
        self.sales + (self.stock - live_stock).max(0)
    }
}

/// How orders take stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OrderStrategy {
    /// Reservation in the ledger + transactional message (the design).
    #[default]
    WriteBehind,
    /// Conditional `UPDATE … WHERE stock >= n` in the order's transaction.
    DbLock,
    /// `version` compare-and-set with bounded retries.
    DbOptimistic,
}

impl OrderStrategy {
    pub const ALL: [OrderStrategy; 3] = [
        OrderStrategy::WriteBehind,
        OrderStrategy::DbLock,
        OrderStrategy::DbOptimistic,
    ];

    /// Whether its sales take stock from the ledger (the cache) first and
    /// the DB after, rather than from the DB alone.
    pub fn keeps_ledger(self) -> bool {
        self == OrderStrategy::WriteBehind
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStrategy::WriteBehind => "write-behind",
            OrderStrategy::DbLock => "db-lock",
            OrderStrategy::DbOptimistic => "db-optimistic",
        }
    }
}

impl std::str::FromStr for OrderStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStrategy::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("expected write-behind, db-lock or db-optimistic, not {s:?}"))
    }
}

/// Where a promo stands at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromoState {
    NotStarted,
    Ongoing,
    Ended,
}

/// Why a promo cannot sell right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOnSale {
    NotPublished,
    NotStarted,
    Ended,
}

impl Promo {
    pub fn state_at(&self, now: DateTime<Utc>) -> PromoState {
        if now < self.start_at {
            PromoState::NotStarted
        } else if now >= self.end_at {
            PromoState::Ended
        } else {
            PromoState::Ongoing
        }
    }

    /// Ok when the promo sells at `now`: published and between start and end.
    pub fn check_on_sale(&self, now: DateTime<Utc>) -> Result<(), NotOnSale> {
        if !self.published {
            return Err(NotOnSale::NotPublished);
        }
        match self.state_at(now) {
            PromoState::NotStarted => Err(NotOnSale::NotStarted),
            PromoState::Ended => Err(NotOnSale::Ended),
            PromoState::Ongoing => Ok(()),
        }
    }

    /// The strategy the promo's sale is held to: the one it was published
    /// under, or `instance`'s for a promo published before promos recorded
    /// it (or not published yet).
    pub fn strategy_or(&self, instance: OrderStrategy) -> OrderStrategy {
        self.published_under().unwrap_or(instance)
    }

    /// The strategy it was published under, when recorded.
    pub fn published_under(&self) -> Option<OrderStrategy> {
        self.baseline.and_then(|b| b.strategy)
    }

    /// Whether its sale takes stock from the ledger first (write-behind),
    /// by [`Promo::strategy_or`].
    pub fn sold_with_ledger(&self, instance: OrderStrategy) -> bool {
        self.strategy_or(instance).keeps_ledger()
    }

    /// Ok when an instance selling with `instance` may sell this promo: the
    /// promo was published under a strategy that keeps its stock where
    /// `instance`'s does — the ledger, or the DB alone. Otherwise the
    /// promo's strategy: a ledger warmed at publish and never told of the
    /// DB's sales (or a DB never told of the ledger's reservations yet)
    /// would sell units twice.
    pub fn check_sold_by(&self, instance: OrderStrategy) -> Result<(), OrderStrategy> {
        let own = self.strategy_or(instance);
        if own.keeps_ledger() == instance.keeps_ledger() {
            Ok(())
        } else {
            Err(own)
        }
    }

    /// Whether two promos of the same item overlap in time.
    pub fn overlaps(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        self.start_at < end && start < self.end_at
    }
}

/// A promo to create.
#[derive(Debug, Clone)]
pub struct NewPromo {
    pub item_id: ItemId,
    pub name: String,
    pub price_cents: i64,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
}

impl NewPromo {
    /// Checks the promo against the item's normal price and the clock.
    pub fn validate(&self, item_price_cents: i64, now: DateTime<Utc>) -> Result<(), Invalid> {
        bounded_text("name", self.name.trim(), 1, 100)?;
        if self.price_cents < 1 {
            return Err(Invalid::new("price_cents must be at least 1"));
        }
        if self.price_cents > item_price_cents {
            return Err(Invalid::new(
                "a promo price must not exceed the item's normal price",
            ));
        }
        if self.end_at <= self.start_at {
            return Err(Invalid::new("end_at must be after start_at"));
        }
        if self.end_at <= now {
            return Err(Invalid::new("end_at must be in the future"));
        }
        if self.end_at - self.start_at > chrono::Duration::days(366) {
            return Err(Invalid::new("a promo lasts at most 366 days"));
        }
        // What a DATETIME column holds (start_at is earlier still).
        if chrono::Datelike::year(&self.end_at) > 9999 {
            return Err(Invalid::new("end_at must be before the year 10000 (UTC)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn promo(published: bool) -> Promo {
        let now = Utc::now();
        Promo {
            id: PromoId(1),
            item_id: ItemId(1),
            name: "p".into(),
            price_cents: 10,
            start_at: now + Duration::seconds(10),
            end_at: now + Duration::seconds(20),
            published,
            baseline: None,
        }
    }

    #[test]
    fn state_follows_the_clock() {
        let p = promo(true);
        assert_eq!(
            p.state_at(p.start_at - Duration::milliseconds(1)),
            PromoState::NotStarted
        );
        assert_eq!(p.state_at(p.start_at), PromoState::Ongoing);
        assert_eq!(p.state_at(p.end_at), PromoState::Ended);
    }

    #[test]
    fn an_unpublished_promo_never_sells() {
        let p = promo(false);
        assert_eq!(p.check_on_sale(p.start_at), Err(NotOnSale::NotPublished));
        assert_eq!(
            promo(true).check_on_sale(p.start_at + Duration::seconds(1)),
            Ok(())
        );
    }

    #[test]
    fn promos_must_be_cheaper_and_end_after_they_start() {
        let now = Utc::now();
        let np = NewPromo {
            item_id: ItemId(1),
            name: "x".into(),
            price_cents: 50,
            start_at: now,
            end_at: now + Duration::hours(1),
        };
        assert!(np.validate(100, now).is_ok());
        assert!(np.validate(40, now).is_err());
        assert!(NewPromo {
            end_at: now,
            ..np.clone()
        }
        .validate(100, now)
        .is_err());
        let far = "9999-12-31T20:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let r = NewPromo {
            start_at: far,
            end_at: far + Duration::hours(5),
            ..np.clone()
        }
        .validate(100, now);
        assert!(r.as_ref().is_err_and(|e| e.0.contains("10000")), "{r:?}");
    }

    #[test]
    fn a_sale_is_held_to_where_its_strategy_keeps_the_stock() {
        use OrderStrategy::*;
        let published_under = |strategy| Promo {
            baseline: Some(PromoBaseline {
                stock: 5,
                sales: 0,
                strategy,
            }),
            ..promo(true)
        };
        // Same place (the ledger, or the DB alone): sold.
        for (own, here) in [
            (WriteBehind, WriteBehind),
            (DbLock, DbLock),
            (DbLock, DbOptimistic),
            (DbOptimistic, DbLock),
        ] {
            assert_eq!(published_under(Some(own)).check_sold_by(here), Ok(()));
            assert_eq!(published_under(Some(own)).strategy_or(here), own);
        }
        // The other place: refused, naming the promo's own strategy.
        assert_eq!(
            published_under(Some(DbLock)).check_sold_by(WriteBehind),
            Err(DbLock)
        );
        assert_eq!(
            published_under(Some(WriteBehind)).check_sold_by(DbOptimistic),
            Err(WriteBehind)
        );
        // Published before promos recorded it, or not yet: the instance's.
        for here in OrderStrategy::ALL {
            assert_eq!(published_under(None).check_sold_by(here), Ok(()));
            assert_eq!(promo(false).strategy_or(here), here);
        }
    }

    #[test]
    fn strategies_read_back_from_their_names() {
        for s in OrderStrategy::ALL {
            assert_eq!(s.as_str().parse::<OrderStrategy>(), Ok(s));
        }
        assert!("write_behind".parse::<OrderStrategy>().is_err());
        assert!("".parse::<OrderStrategy>().is_err());
    }

    #[test]
    fn overlapping_windows_are_detected() {
        let p = promo(true);
        assert!(p.overlaps(
            p.start_at - Duration::seconds(5),
            p.start_at + Duration::seconds(1)
        ));
        assert!(!p.overlaps(p.end_at, p.end_at + Duration::seconds(5)));
    }
}
