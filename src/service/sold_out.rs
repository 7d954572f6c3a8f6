//! Process-local sold-out flags: once the ledger says a promo is sold out,
//! this instance answers the crowd itself for a short while (no round trip),
//! then asks the ledger again, so stock given back is seen within the TTL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::domain::PromoId;

pub struct SoldOutFlags {
    ttl: Duration,
    flags: RwLock<HashMap<PromoId, Instant>>,
}

impl SoldOutFlags {
    pub fn new(ttl: Duration) -> Self {
        SoldOutFlags {
            ttl,
            flags: RwLock::new(HashMap::new()),
        }
    }

    /// Whether this instance believes the promo sold out (flag younger than
    /// the TTL).
    pub fn is_set(&self, promo: PromoId) -> bool {
        self.flags
            .read()
            .get(&promo)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    pub fn set(&self, promo: PromoId) {
        self.flags.write().insert(promo, Instant::now());
    }

    pub fn clear(&self, promo: PromoId) {
        if self.flags.read().contains_key(&promo) {
            self.flags.write().remove(&promo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_expires_after_its_ttl_and_can_be_cleared() {
        let f = SoldOutFlags::new(Duration::from_millis(30));
        assert!(!f.is_set(PromoId(1)));
        f.set(PromoId(1));
        assert!(f.is_set(PromoId(1)));
        assert!(!f.is_set(PromoId(2)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!f.is_set(PromoId(1)));
        f.set(PromoId(1));
        f.clear(PromoId(1));
        assert!(!f.is_set(PromoId(1)));
    }
}
