//! The key/value and rate-limit contracts.

use std::sync::Arc;
use std::time::Duration;

use seckill::cache::{KvStore, LeaseRenewal, Permit, RateLimiter, RateRule};

fn key(name: &str) -> String {
    format!("contract:{}:{}:{}", std::process::id(), name, rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub async fn suite(kv: Arc<dyn KvStore>) {
    let k = key("a");
    assert_eq!(kv.get(&k).await.unwrap(), None);
    kv.set(&k, "v1", Duration::from_secs(10)).await.unwrap();
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("v1"));
    assert_eq!(kv.take(&k).await.unwrap().as_deref(), Some("v1"));
    assert_eq!(kv.take(&k).await.unwrap(), None, "taken once");

    let k = key("ttl");
    kv.set(&k, "v", Duration::from_millis(1100)).await.unwrap();
    assert!(kv.get(&k).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(kv.get(&k).await.unwrap(), None, "expired");
    assert_eq!(kv.take(&k).await.unwrap(), None);

    let k = key("lease");
    assert!(kv
        .set_if_absent(&k, "a", Duration::from_millis(1100))
        .await
        .unwrap());
    assert!(
        !kv.set_if_absent(&k, "b", Duration::from_secs(10))
            .await
            .unwrap(),
        "held"
    );
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("a"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        kv.set_if_absent(&k, "c", Duration::from_secs(10))
            .await
            .unwrap(),
        "expired lease taken"
    );
    assert!(
        !kv.delete_if_equals(&k, "a").await.unwrap(),
        "an expired holder does not give back the lease another took"
    );
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("c"));
    assert!(
        kv.delete_if_equals(&k, "c").await.unwrap(),
        "its holder does"
    );
    assert_eq!(kv.get(&k).await.unwrap(), None);
    assert!(!kv.delete_if_equals(&k, "c").await.unwrap(), "once");

    let k = key("renew");
    assert!(kv
        .set_if_absent(&k, "a", Duration::from_millis(1100))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        kv.renew_lease(&k, "a", Duration::from_millis(1100))
            .await
            .unwrap(),
        LeaseRenewal::Renewed
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        kv.get(&k).await.unwrap().as_deref(),
        Some("a"),
        "a renewed lease lives its TTL from the renewal"
    );
    assert_eq!(
        kv.renew_lease(&k, "b", Duration::from_secs(10))
            .await
            .unwrap(),
        LeaseRenewal::Lost,
        "another holder's lease is left alone"
    );
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("a"));
    kv.delete(&k).await.unwrap();
    assert_eq!(
        kv.renew_lease(&k, "a", Duration::from_secs(10))
            .await
            .unwrap(),
        LeaseRenewal::Retaken,
        "a lease that is gone (the store restarted empty) is taken again"
    );
    assert!(
        !kv.set_if_absent(&k, "b", Duration::from_secs(10))
            .await
            .unwrap(),
        "and held"
    );
    assert!(kv.delete_if_equals(&k, "a").await.unwrap());

    let k = key("del");
    kv.set(&k, "v", Duration::from_secs(10)).await.unwrap();
    kv.delete(&k).await.unwrap();
    assert_eq!(kv.get(&k).await.unwrap(), None);

    let k = key("gate");
    let record = |i: usize| format!("{k}:record:{i}");
    let holder = |i: usize| format!("{k}:holder:{i}");
    let long = Duration::from_secs(10);
    assert_eq!(
        kv.take_permit_and_set(&k, &holder(99), long, &record(99), "v", long)
            .await
            .unwrap(),
        Permit::Missing,
        "missing counter: no permit, and said so"
    );
    assert_eq!(
        kv.get(&record(99)).await.unwrap(),
        None,
        "no permit, no record"
    );
    assert!(kv.set_counter_if_absent(&k, 1, long).await.unwrap());
    assert!(
        !kv.set_counter_if_absent(&k, 7, long).await.unwrap(),
        "set already"
    );
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("1"));
    kv.set_counter(&k, 3, long).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let kv = kv.clone();
            let (k, h, r) = (k.clone(), holder(i), record(i));
            tokio::spawn(async move {
                kv.take_permit_and_set(&k, &h, long, &r, &format!("v{i}"), Duration::from_secs(3))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut granted = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Permit::Granted => granted.push(i),
            Permit::Refused => {}
            Permit::Held | Permit::Missing => {
                panic!("holder {i} held nothing yet, the gate is set")
            }
        }
    }
    assert_eq!(granted.len(), 3, "exactly the counter's permits");
    for i in 0..10 {
        let expected = granted.contains(&i).then(|| format!("v{i}"));
        assert_eq!(
            kv.get(&record(i)).await.unwrap(),
            expected,
            "a record for each permit granted, none for the others"
        );
    }
    assert_eq!(
        kv.take_permit_and_set(&k, &holder(98), long, &record(98), "v", long)
            .await
            .unwrap(),
        Permit::Refused
    );
    assert_eq!(kv.get(&record(98)).await.unwrap(), None);
    // A holder takes no second permit, even from a spent counter: its
    // record is replaced (one live record per holder).
    let first = granted[0];
    assert_eq!(
        kv.take_permit_and_set(&k, &holder(first), long, &record(50), "again", long)
            .await
            .unwrap(),
        Permit::Held
    );
    assert_eq!(kv.get(&record(50)).await.unwrap().as_deref(), Some("again"));
    assert_eq!(
        kv.get(&record(first)).await.unwrap(),
        None,
        "the holder's previous record is gone"
    );
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("0"));
    // Units given back refill a spent gate; a missing gate stays missing.
    assert!(kv.add_to_counter(&k, 2).await.unwrap());
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("2"));
    assert_eq!(
        kv.take_permit_and_set(&k, &holder(first), long, &record(51), "v", long)
            .await
            .unwrap(),
        Permit::Held,
        "a refill is for other holders"
    );
    assert_eq!(kv.get(&record(50)).await.unwrap(), None);
    assert_eq!(kv.get(&record(51)).await.unwrap().as_deref(), Some("v"));
    // A record given back only while its holder still names it.
    assert!(
        !kv.set_if_held(&holder(first), &record(50), "back", long)
            .await
            .unwrap(),
        "replaced since"
    );
    assert_eq!(kv.get(&record(50)).await.unwrap(), None);
    kv.delete(&record(51)).await.unwrap(); // used up
    assert!(kv
        .set_if_held(&holder(first), &record(51), "back", long)
        .await
        .unwrap());
    assert_eq!(kv.get(&record(51)).await.unwrap().as_deref(), Some("back"));
    assert!(
        !kv.set_if_held(&holder(99), &record(99), "back", long)
            .await
            .unwrap(),
        "no holder"
    );
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("2"));
    assert_eq!(
        kv.take_permit_and_set(
            &k,
            &holder(97),
            Duration::from_secs(3),
            &record(97),
            "v",
            long
        )
        .await
        .unwrap(),
        Permit::Granted
    );
    let missing = key("no-gate");
    assert!(!kv.add_to_counter(&missing, 2).await.unwrap());
    assert_eq!(kv.get(&missing).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(3300)).await;
    for &i in &granted {
        assert_eq!(
            kv.get(&record(i)).await.unwrap(),
            None,
            "the record's TTL holds"
        );
    }
    assert_eq!(
        kv.take_permit_and_set(&k, &holder(97), long, &record(96), "v", long)
            .await
            .unwrap(),
        Permit::Granted,
        "a holder's mark lapses with its TTL"
    );
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("0"));

    let k = key("hash");
    assert!(kv.hash_get_all(&k).await.unwrap().is_empty());
    let ttl = Duration::from_secs(10);
    kv.hash_add(&k, &[("sold_out", 2), ("rate_limited", 1)], ttl)
        .await
        .unwrap();
    let adds: Vec<_> = (0..10)
        .map(|_| {
            let kv = kv.clone();
            let k = k.clone();
            tokio::spawn(async move { kv.hash_add(&k, &[("sold_out", 1)], ttl).await.unwrap() })
        })
        .collect();
    for a in adds {
        a.await.unwrap();
    }
    let mut all = kv.hash_get_all(&k).await.unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![
            ("rate_limited".to_owned(), "1".to_owned()),
            ("sold_out".to_owned(), "12".to_owned())
        ],
        "counters add up, none lost"
    );
    let k = key("fields");
    kv.hash_set(&k, "n1", "a", ttl).await.unwrap();
    kv.hash_set(&k, "n2", "b", ttl).await.unwrap();
    kv.hash_set(&k, "n1", "c", ttl).await.unwrap();
    kv.hash_delete(&k, "n2").await.unwrap();
    assert_eq!(
        kv.hash_get_all(&k).await.unwrap(),
        vec![("n1".to_owned(), "c".to_owned())]
    );
    let k = key("hash-ttl");
    kv.hash_set(&k, "f", "v", Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(kv.hash_get_all(&k).await.unwrap().is_empty(), "expired");
    kv.ping().await.unwrap();
}

pub async fn rate_limit_suite(l: Arc<dyn RateLimiter>) {
    let rule = RateRule {
        name: "contract",
        limit: 3,
        period: Duration::from_secs(60),
    };
    let k = key("rl");
    for _ in 0..3 {
        assert!(l.check(&rule, &k).await.unwrap());
    }
    assert!(
        !l.check(&rule, &k).await.unwrap(),
        "the fourth within the period is refused"
    );
    assert!(
        l.check(&rule, &key("other")).await.unwrap(),
        "keys are independent"
    );
    let fast = RateRule {
        name: "contract_fast",
        limit: 2,
        period: Duration::from_millis(200),
    };
    let k = key("refill");
    assert!(l.check(&fast, &k).await.unwrap());
    assert!(l.check(&fast, &k).await.unwrap());
    assert!(!l.check(&fast, &k).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        l.check(&fast, &k).await.unwrap(),
        "tokens refill over the period"
    );
}

/// A busy rule (the global order and token rules, thousands a second),
/// checked through two limiters sharing one backend as two instances do:
/// together they never allow more than the bucket holds plus what refilled
/// meanwhile, and they do not waste it either (an adapter may take permits
/// ahead in small leases: a few may lapse unused).
pub async fn busy_rule_suite(a: Arc<dyn RateLimiter>, b: Arc<dyn RateLimiter>) {
    let rule = RateRule {
        name: "contract_busy",
        limit: 2_000,
        period: Duration::from_secs(1),
    };
    let k = key("busy");
    let started = std::time::Instant::now();
    let mut allowed = 0u32;
    for i in 0..3_000 {
        let l = if i % 2 == 0 { &a } else { &b };
        if l.check(&rule, &k).await.unwrap() {
            allowed += 1;
        }
    }
    let refilled = (2_000.0 * started.elapsed().as_secs_f64()).ceil() as u32;
    assert!(
        allowed <= 2_000 + refilled + 1,
        "{allowed} allowed: more than the bucket (2,000) + {refilled} refilled"
    );
    assert!(
        allowed >= 2_000 - 2 * 64,
        "{allowed} allowed: the bucket was wasted"
    );
}
