//! The node id of order numbers and `stock_log` ids ([`IdGenerator`]) must
//! differ between running instances, or two of them can make the same id in
//! the same millisecond. An instance leases its node id from the shared
//! key/value store: `node:<id>` set if absent, with a TTL, holding a value
//! only this process knows. Unless one is configured (`SECKILL_NODE_ID`),
//! any free id is leased; a configured id is claimed ([`NodeLease::claim`]),
//! and while another process holds it (a crashed predecessor's lease not
//! lapsed yet, or another instance given or leasing the same id) this one
//! takes no orders (503) until it is free: set and leased ids can share
//! one store and never collide. A waiting instance marks its id wanted
//! (`node:<id>:wanted`), and a leased instance holding it moves to a free
//! id at its next renewal.
//!
//! The lease is renewed every heartbeat (at most every third of its TTL). A
//! lease found gone (the store restarted empty, or lost the key) is taken
//! again at once; one found held by another instance (which leased the id
//! while it was gone) is given up, and this instance moves to a free id (a
//! configured id is not given up: the instance waits for it): a heartbeat
//! after the store comes back, the node ids are unique again.
//! While the lease cannot be confirmed for its TTL (the store unreachable:
//! it may have lapsed, and another instance may hold the id), the instance
//! takes no orders (503), so it makes no id that could collide. An id made
//! twice in the remaining window (a newcomer leasing an id in the heartbeat
//! after the store restarted empty) is refused by the journal's primary
//! key: a 503 for the order (with write-behind, for its whole batch),
//! nothing written, never an order stored twice.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::cache::{CacheResult, KvStore, LeaseRenewal};
use crate::domain::ids::{monotonic_ms, MAX_NODE_ID};
use crate::domain::IdGenerator;

fn node_key(node: u16) -> String {
    format!("node:{node}")
}

/// Set (with the lease's TTL) by an instance waiting for its configured
/// node id: a leased instance holding that id moves to a free one.
fn wanted_key(node: u16) -> String {
    format!("node:{node}:wanted")
}

/// This process's lease of its node id.
pub struct NodeLease {
    kv: Arc<dyn KvStore>,
    /// The lease's value: this process, and a random number no other
    /// process has.
    holder: String,
    ttl: Duration,
    node: AtomicU16,
    /// When ([`monotonic_ms`]) the lease was asked for: it is ours until
    /// this + TTL.
    taken_at_ms: u64,
    /// Set by [`release`](Self::release): renewals stop.
    released: AtomicBool,
    /// A configured id ([`claim`](Self::claim)): never moved to another.
    fixed: bool,
    /// Whether the lease was held at its last renewal (a claimed id not
    /// free yet is not).
    held: AtomicBool,
    /// Held by a renewal and by the release: a renewal under way when the
    /// process gives the lease back cannot take it again after.
    renewing: tokio::sync::Mutex<()>,
}

impl NodeLease {
    /// Leases a free node id, trying them from a random one on; `None` when
    /// every one of the 1,024 is leased.
    pub async fn acquire(kv: Arc<dyn KvStore>, ttl: Duration) -> CacheResult<Option<Self>> {
        let taken_at_ms = monotonic_ms();
        let holder = holder();
        let Some(node) = take_free(kv.as_ref(), &holder, ttl).await? else {
            return Ok(None);
        };
        Ok(Some(Self::new(
            kv,
            holder,
            ttl,
            node,
            taken_at_ms,
            false,
            true,
        )))
    }

    /// Claims the configured node id `node`. Held by another process, the
    /// lease is not ours yet: its [`ids`](Self::ids) own no node id (no
    /// orders) until a renewal finds it free and takes it.
    pub async fn claim(kv: Arc<dyn KvStore>, node: u16, ttl: Duration) -> CacheResult<Self> {
        let taken_at_ms = monotonic_ms();
        let holder = holder();
        let held = kv.set_if_absent(&node_key(node), &holder, ttl).await?;
        if !held {
            kv.set(&wanted_key(node), &holder, ttl).await?;
            tracing::error!(
                node,
                "the configured node id is leased by another process (a crashed predecessor's \
                 lease lapses within SECKILL_NODE_LEASE_TTL_MS, an instance that leased it moves \
                 to a free id at its next renewal, one given the same id keeps it): no orders \
                 here until it is free"
            );
        }
        Ok(Self::new(kv, holder, ttl, node, taken_at_ms, true, held))
    }

    fn new(
        kv: Arc<dyn KvStore>,
        holder: String,
        ttl: Duration,
        node: u16,
        taken_at_ms: u64,
        fixed: bool,
        held: bool,
    ) -> Self {
        NodeLease {
            kv,
            holder,
            ttl,
            node: AtomicU16::new(node),
            taken_at_ms,
            released: AtomicBool::new(false),
            fixed,
            held: AtomicBool::new(held),
            renewing: tokio::sync::Mutex::new(()),
        }
    }

    /// The node id leased.
    pub fn node(&self) -> u16 {
        self.node.load(Ordering::Relaxed)
    }

    /// An id generator on the leased node id, which it owns for the lease's
    /// TTL from when the lease was asked for (a claimed id another process
    /// holds: not at all); [`keep`](Self::keep) extends that on every
    /// renewal.
    pub fn ids(&self) -> IdGenerator {
        let ids = IdGenerator::new(self.node());
        if self.held.load(Ordering::Relaxed) {
            ids.own_node_until(self.taken_at_ms + self.ttl_ms());
        } else {
            ids.own_node_until(0);
        }
        ids
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// One renewal. A leased id another instance holds now, or waits for as
    /// its configured one, is given up for a free node id, which `ids` takes
    /// from its next id on (a configured id is waited for instead). Each lease
    /// confirmed (renewed, taken again, or a new one) lets `ids` own its
    /// node id for the TTL from when it was asked for.
    pub async fn renew(&self, ids: &IdGenerator) -> CacheResult<LeaseRenewal> {
        let _renewing = self.renewing.lock().await;
        if self.released.load(Ordering::Acquire) {
            return Ok(LeaseRenewal::Lost);
        }
        let node = self.node();
        let asked_at = monotonic_ms();
        let renewal = self
            .kv
            .renew_lease(&node_key(node), &self.holder, self.ttl)
            .await?;
        let was_held = self
            .held
            .swap(renewal != LeaseRenewal::Lost, Ordering::Relaxed);
        match renewal {
            LeaseRenewal::Renewed if !self.fixed => {
                // Renewed: owned, whatever the hand-over below meets.
                ids.own_node_until(asked_at + self.ttl_ms());
                if let Err(e) = self.yield_if_wanted(node, ids).await {
                    tracing::warn!(node, error = %e, "cannot hand this node id over to the instance waiting for it now; trying again");
                }
            }
            LeaseRenewal::Renewed => {}
            LeaseRenewal::Retaken if self.fixed && !was_held => {
                let _ = self
                    .kv
                    .delete_if_equals(&wanted_key(node), &self.holder)
                    .await;
                tracing::info!(node, "the configured node id is free: taken; orders here again")
            }
            LeaseRenewal::Retaken => tracing::warn!(
                node,
                "this instance's node id lease was gone (the shared store restarted or lost it); taken again"
            ),
            LeaseRenewal::Lost if self.fixed => {
                ids.own_node_until(0);
                // A leased instance holding it moves away at its next renewal.
                self.kv.set(&wanted_key(node), &self.holder, self.ttl).await?;
                if was_held {
                    tracing::error!(
                        node,
                        "another process leased this instance's configured node id while the \
                         lease was gone from the shared store: no orders here until it is free"
                    );
                }
                return Ok(renewal);
            }
            LeaseRenewal::Lost => {
                // No order takes an id on the lost node id meanwhile.
                ids.own_node_until(0);
                let Some(moved) = self.move_to_free(ids).await? else {
                    tracing::error!(
                        node,
                        "another instance leased this instance's node id, and no other is free \
                         (1,024 leased): no orders here until one is"
                    );
                    return Ok(renewal);
                };
                tracing::error!(
                    node,
                    moved,
                    "another instance leased this instance's node id while the lease was gone \
                     from the shared store; moved to a free one"
                );
            }
        }
        ids.own_node_until(asked_at + self.ttl_ms());
        Ok(renewal)
    }

    /// A leased id an instance waits for as its configured one is handed
    /// over: this instance moves to a free id (its next ids take it), then
    /// gives the old one back. With none free it keeps the old one.
    async fn yield_if_wanted(&self, node: u16, ids: &IdGenerator) -> CacheResult<()> {
        if self.kv.get(&wanted_key(node)).await?.is_none() {
            return Ok(());
        }
        let Some(moved) = self.move_to_free(ids).await? else {
            tracing::warn!(
                node,
                "an instance waits for this node id as its configured one, and no other is free: kept"
            );
            return Ok(());
        };
        self.kv
            .delete_if_equals(&node_key(node), &self.holder)
            .await?;
        tracing::warn!(
            node,
            moved,
            "an instance waits for this node id as its configured one: moved to a free one"
        );
        Ok(())
    }

    /// Leases a free node id and moves this lease and `ids` to it (their
    /// next ids take it); `None` when every one is leased.
    async fn move_to_free(&self, ids: &IdGenerator) -> CacheResult<Option<u16>> {
        let Some(moved) = take_free(self.kv.as_ref(), &self.holder, self.ttl).await? else {
            return Ok(None);
        };
        ids.set_node(moved);
        self.node.store(moved, Ordering::Relaxed);
        self.held.store(true, Ordering::Relaxed);
        Ok(Some(moved))
    }

    /// Renews the lease every `period` (at most a third of its TTL) until
    /// it is released.
    pub async fn keep(self: Arc<Self>, ids: Arc<IdGenerator>, period: Duration) {
        let period = period.min(self.ttl / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if self.released.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = self.renew(&ids).await {
                if ids.owns_node() {
                    tracing::warn!(node = self.node(), error = %e, "node id lease not renewed; trying again");
                } else {
                    tracing::error!(node = self.node(), error = %e,
                        "node id lease not confirmed for its TTL: another instance may hold it; no orders here until it is");
                }
            }
        }
    }

    /// Gives the lease back (a graceful shutdown), unless another holds it:
    /// `ids` makes no order id on it from here, and [`keep`](Self::keep)
    /// renews it no more. A renewal under way is waited for at most 2 s
    /// (then the lease lapses after its TTL instead).
    pub async fn release(&self, ids: &IdGenerator) {
        ids.own_node_until(0);
        self.released.store(true, Ordering::Release);
        let Ok(_renewing) =
            tokio::time::timeout(Duration::from_secs(2), self.renewing.lock()).await
        else {
            return;
        };
        let _ = self
            .kv
            .delete_if_equals(&node_key(self.node()), &self.holder)
            .await;
        if self.fixed {
            let _ = self
                .kv
                .delete_if_equals(&wanted_key(self.node()), &self.holder)
                .await;
        }
    }
}

/// A lease's value: this process, and a random number no other process
/// has.
fn holder() -> String {
    format!("{}:{:016x}", std::process::id(), rand::random::<u64>())
}

async fn take_free(kv: &dyn KvStore, holder: &str, ttl: Duration) -> CacheResult<Option<u16>> {
    let ids = u32::from(MAX_NODE_ID) + 1;
    let start = rand::thread_rng().gen_range(0..ids);
    for i in 0..ids {
        let node = ((start + i) % ids) as u16;
        if kv.set_if_absent(&node_key(node), holder, ttl).await? {
            return Ok(Some(node));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::memory::MemoryKvStore;

    const TTL: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn instances_sharing_a_store_lease_different_node_ids() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let lease = NodeLease::acquire(kv.clone(), TTL).await.unwrap().unwrap();
            assert!(seen.insert(lease.node()), "node id {} twice", lease.node());
        }
    }

    #[tokio::test]
    async fn a_released_node_id_is_free_again_and_none_is_left_when_all_are_leased() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let mut leases = Vec::new();
        for _ in 0..=MAX_NODE_ID {
            leases.push(NodeLease::acquire(kv.clone(), TTL).await.unwrap().unwrap());
        }
        assert!(NodeLease::acquire(kv.clone(), TTL).await.unwrap().is_none());
        let freed = leases[17].node();
        leases[17].release(&IdGenerator::new(freed)).await;
        let next = NodeLease::acquire(kv.clone(), TTL).await.unwrap().unwrap();
        assert_eq!(next.node(), freed);
    }

    #[tokio::test]
    async fn a_lease_lost_with_the_store_is_taken_again_or_given_up_for_a_free_id() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let a = NodeLease::acquire(kv.clone(), TTL).await.unwrap().unwrap();
        let ids = a.ids();
        assert!(ids.owns_node());
        assert_eq!(a.renew(&ids).await.unwrap(), LeaseRenewal::Renewed);

        // The store restarts empty; nobody took the id meanwhile.
        kv.delete(&node_key(a.node())).await.unwrap();
        assert_eq!(a.renew(&ids).await.unwrap(), LeaseRenewal::Retaken);
        assert!(!kv
            .set_if_absent(&node_key(a.node()), "other", TTL)
            .await
            .unwrap());

        // The store restarts empty, and a new instance leases a's id first.
        let old = a.node();
        kv.delete(&node_key(old)).await.unwrap();
        kv.set_if_absent(&node_key(old), "newcomer", TTL)
            .await
            .unwrap();
        let before = ids.next_id();
        assert_eq!(a.renew(&ids).await.unwrap(), LeaseRenewal::Lost);
        assert_ne!(a.node(), old, "a moved");
        assert_eq!(ids.node(), a.node(), "its ids take the new node id");
        assert!(ids.next_id() > before);
        assert_eq!(
            kv.get(&node_key(old)).await.unwrap().as_deref(),
            Some("newcomer"),
            "the newcomer keeps the id"
        );
        assert_eq!(a.renew(&ids).await.unwrap(), LeaseRenewal::Renewed);
        assert!(ids.owns_node());
    }

    #[tokio::test]
    async fn a_lost_lease_with_no_free_id_left_owns_no_node_id_until_one_is() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let a = NodeLease::acquire(kv.clone(), TTL).await.unwrap().unwrap();
        let ids = a.ids();
        let mut others = Vec::new();
        for _ in 0..MAX_NODE_ID {
            others.push(NodeLease::acquire(kv.clone(), TTL).await.unwrap().unwrap());
        }
        kv.delete(&node_key(a.node())).await.unwrap();
        kv.set_if_absent(&node_key(a.node()), "newcomer", TTL)
            .await
            .unwrap();
        assert_eq!(a.renew(&ids).await.unwrap(), LeaseRenewal::Lost);
        assert!(!ids.owns_node(), "no orders on an id another holds");
        let freed = others[3].node();
        others[3].release(&IdGenerator::new(freed)).await;
        assert_eq!(a.renew(&ids).await.unwrap(), LeaseRenewal::Lost);
        assert_eq!((a.node(), ids.node()), (freed, freed));
        assert!(ids.owns_node(), "moved: orders again");
    }

    #[tokio::test]
    async fn a_configured_node_id_is_claimed_and_waited_for_never_moved() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let a = NodeLease::claim(kv.clone(), 7, TTL).await.unwrap();
        let ids = a.ids();
        assert!((ids.owns_node(), ids.node()) == (true, 7));
        let mut others = Vec::new();
        for _ in 0..MAX_NODE_ID {
            let leased = NodeLease::acquire(kv.clone(), TTL).await.unwrap().unwrap();
            assert_ne!(leased.node(), 7, "a leased id is never a claimed one");
            others.push(leased);
        }
        // Another process given the same id (or a restart while the crashed
        // predecessor's lease lives): no orders until the id is free.
        let b = NodeLease::claim(kv.clone(), 7, TTL).await.unwrap();
        let b_ids = b.ids();
        assert!(!b_ids.owns_node());
        assert_eq!(b.renew(&b_ids).await.unwrap(), LeaseRenewal::Lost);
        assert!(
            (b_ids.owns_node(), b.node()) == (false, 7),
            "waits, never moves"
        );
        a.release(&ids).await;
        assert_eq!(b.renew(&b_ids).await.unwrap(), LeaseRenewal::Retaken);
        assert!(b_ids.owns_node(), "free: taken, orders again");
        assert_eq!(b.renew(&b_ids).await.unwrap(), LeaseRenewal::Renewed);

        // A leased instance drew the id while b was away: b marks it
        // wanted, the leased one moves to a free id, b takes it back.
        b.release(&b_ids).await;
        let leased = NodeLease::claim(kv.clone(), 7, TTL).await.unwrap();
        let leased = NodeLease {
            fixed: false,
            ..leased
        };
        let leased_ids = leased.ids();
        let b = NodeLease::claim(kv.clone(), 7, TTL).await.unwrap();
        let b_ids = b.ids();
        assert!(!b_ids.owns_node());
        let freed = others[5].node();
        others[5].release(&IdGenerator::new(freed)).await;
        assert_eq!(
            leased.renew(&leased_ids).await.unwrap(),
            LeaseRenewal::Renewed
        );
        assert_eq!(
            (leased.node(), leased_ids.node()),
            (freed, freed),
            "moved away"
        );
        assert!(leased_ids.owns_node());
        assert_eq!(b.renew(&b_ids).await.unwrap(), LeaseRenewal::Retaken);
        assert!(b_ids.owns_node());
        assert_eq!(
            kv.get(&wanted_key(7)).await.unwrap(),
            None,
            "no longer wanted"
        );
        assert_eq!(
            leased.renew(&leased_ids).await.unwrap(),
            LeaseRenewal::Renewed
        );
        assert_eq!(leased.node(), freed, "and stays put");

        // Lost to another holder while the store forgot it: no more orders,
        // and the id is kept, not traded for a free one.
        kv.delete(&node_key(7)).await.unwrap();
        kv.set_if_absent(&node_key(7), "newcomer", TTL)
            .await
            .unwrap();
        assert_eq!(b.renew(&b_ids).await.unwrap(), LeaseRenewal::Lost);
        assert!((b_ids.owns_node(), b.node(), b_ids.node()) == (false, 7, 7));
    }

    #[tokio::test]
    async fn an_instance_whose_lease_is_not_confirmed_for_its_ttl_owns_no_node_id() {
        let kv = Arc::new(MemoryKvStore::new());
        let lease = NodeLease::acquire(kv.clone(), Duration::from_millis(1_000))
            .await
            .unwrap()
            .unwrap();
        let ids = Arc::new(lease.ids());
        assert!(ids.owns_node());
        // Renewals fail from now on (the store unreachable): past the TTL the
        // lease may have lapsed, and the ids are not this process's alone.
        kv.fail_renewals(true);
        let lease = Arc::new(lease);
        let kept = tokio::spawn(lease.clone().keep(ids.clone(), Duration::from_millis(100)));
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert!(!ids.owns_node());
        kv.fail_renewals(false);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(ids.owns_node(), "confirmed again");
        lease.release(&ids).await;
        assert!(!ids.owns_node(), "no order id on a lease given back");
        tokio::time::timeout(Duration::from_secs(2), kept)
            .await
            .expect("renewals stop once released")
            .unwrap();
        assert_eq!(kv.get(&node_key(lease.node())).await.unwrap(), None);
    }
}
