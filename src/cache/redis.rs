//! Redis adapters: the ledger as one Lua script per step, key/value state
//! with `SET PX` / `GETDEL`, and a GCRA rate limit on the server's clock
//! that holds across every instance. Keys carry a configurable prefix; a
//! promo's ledger keys share the hash tag `{promo id}` so they live on one
//! Redis Cluster slot and one script can touch them all. (The token issue's
//! script touches a promo's gate and a new token's record, which share no
//! tag: the adapters talk to one Redis server, not a Cluster.)

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Script;
use async_trait::async_trait;

use super::*;

/// One multiplexed, self-reconnecting connection shared by the adapters.
#[derive(Clone)]
pub struct RedisConn {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisConn {
    /// Connects (failing fast when Redis does not answer): a connection
    /// attempt, and then each command's answer, waits at most `timeout`
    /// (past it the call fails: 503 at the edge; a script may have run all
    /// the same, its answer lost — the order path settles such a batch
    /// through its journal rows).
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        let client = ::redis::Client::open(url).map_err(|e| CacheError::new("bad Redis URL", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(2)
            .set_max_delay(500);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| CacheError::new("cannot connect to Redis", e))?;
        Ok(RedisConn {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{}", self.prefix, k)
    }

    fn promo_keys(&self, promo: PromoId) -> PromoKeys {
        let base = format!("{}promo:{{{}}}:", self.prefix, promo.0);
        PromoKeys {
            stock: format!("{base}stock"),
            limit: format!("{base}limit"),
            buyers: format!("{base}buyers"),
            reservations: format!("{base}resv"),
            restocked: format!("{base}restocked"),
            sold_out: format!("{base}soldout"),
            version: format!("{base}ver"),
        }
    }

    async fn ping(&self) -> CacheResult<()> {
        let mut c = self.conn.clone();
        ::redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(|e| CacheError::new("Redis PING failed", e))?;
        Ok(())
    }
}

struct PromoKeys {
    stock: String,
    limit: String,
    buyers: String,
    reservations: String,
    restocked: String,
    sold_out: String,
    /// The ledger's version ([`LedgerLevel`]): INCR on every change, a
    /// fresh base from the server's clock on every load.
    version: String,
}

impl PromoKeys {
    /// Every key of the promo's ledger, in the order WARM and REBUILD take
    /// them.
    fn load_into(&self, inv: &mut ::redis::ScriptInvocation<'_>) {
        inv.key(&self.stock)
            .key(&self.limit)
            .key(&self.buyers)
            .key(&self.reservations)
            .key(&self.restocked)
            .key(&self.sold_out)
            .key(&self.version);
    }
}

fn err(context: &'static str) -> impl FnOnce(::redis::RedisError) -> CacheError {
    move |e| CacheError::new(context, e)
}

/// Sets a loaded ledger's version past every version it had: the server's
/// clock in microseconds (a string, so no float on the way), or one more
/// than the version kept when that is higher. Changes (fewer than a
/// million a second) never carry a version past a later load's base on
/// the same server (a failover that loses writes is not covered:
/// docs/RELIABILITY.md).
const FRESH_VERSION: &str = r#"
local function fresh_version(key)
  local t = redis.call('TIME')
  local base = t[1] .. string.format('%06d', tonumber(t[2]))
  local old = redis.call('GET', key)
  if old and tonumber(old) >= tonumber(base) then
    redis.call('INCR', key)
  else
    redis.call('SET', key, base)
  end
end
"#;

const RESERVE: &str = r#"
-- KEYS: stock, limit, buyers, resv, soldout, version
-- ARGV: count, then (user, amount, id) per reservation
-- Answers per reservation: remaining stock (>= 0), -1 sold out,
-- -2 already bought (one order a buyer: any units held, a cancelled
-- order's too), -3 not warmed, -4 more units than the per-user limit
-- loaded with the promo. An id the ledger already holds (a
-- rebuild loaded it from its journal row) is answered as reserved and
-- taken no second time.
local n = tonumber(ARGV[1])
local out = {}
local stock = redis.call('GET', KEYS[1])
if not stock then
  for i = 1, n do out[i] = -3 end
  return out
end
stock = tonumber(stock)
local limit = tonumber(redis.call('GET', KEYS[2]) or '1')
local changed = false
for i = 0, n - 1 do
  local user = ARGV[2 + i * 3]
  local amount = tonumber(ARGV[3 + i * 3])
  local id = ARGV[4 + i * 3]
  local bought = tonumber(redis.call('HGET', KEYS[3], user) or '0')
  if redis.call('HEXISTS', KEYS[4], id) == 1 then
    out[i + 1] = stock
  elseif bought > 0 then
    out[i + 1] = -2
  elseif amount > limit then
    out[i + 1] = -4
  elseif stock < amount then
    out[i + 1] = -1
  else
    stock = stock - amount
    redis.call('HINCRBY', KEYS[3], user, amount)
    redis.call('HSET', KEYS[4], id, user .. ':' .. amount)
    out[i + 1] = stock
    changed = true
  end
end
redis.call('SET', KEYS[1], stock)
if stock <= 0 then redis.call('SET', KEYS[5], '1') end
if changed then redis.call('INCR', KEYS[6]) end
return out
"#;

const RELEASE: &str = r#"
-- KEYS: stock, buyers, resv, soldout, version; ARGV: id
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local v = redis.call('HGET', KEYS[3], ARGV[1])
if not v then return 0 end
local sep = string.find(v, ':', 1, true)
local user = string.sub(v, 1, sep - 1)
local amount = tonumber(string.sub(v, sep + 1))
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('INCRBY', KEYS[1], amount)
if redis.call('HINCRBY', KEYS[2], user, -amount) <= 0 then redis.call('HDEL', KEYS[2], user) end
redis.call('DEL', KEYS[4])
redis.call('INCR', KEYS[5])
return amount
"#;

const RESTOCK: &str = r#"
-- KEYS: stock, restocked, soldout, version; ARGV: id, amount
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('INCR', KEYS[4])
return 1
"#;

const REBUILD: &str = r#"
-- KEYS: stock, limit, buyers, resv, restocked, soldout, version
-- ARGV: stock, limit, n open, (id, user, amount) per open reservation,
--       n buyers, (user, units) per buyer, n restocked, id per restocked
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
local i = 3
local n = tonumber(ARGV[i])
for _ = 1, n do
  redis.call('HSET', KEYS[4], ARGV[i + 1], ARGV[i + 2] .. ':' .. ARGV[i + 3])
  i = i + 3
end
i = i + 1
n = tonumber(ARGV[i])
for _ = 1, n do
  redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 2])
  i = i + 2
end
i = i + 1
n = tonumber(ARGV[i])
for _ = 1, n do
  redis.call('SADD', KEYS[5], ARGV[i + 1])
  i = i + 1
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
if tonumber(ARGV[1]) <= 0 then redis.call('SET', KEYS[6], '1') end
fresh_version(KEYS[7])
return 1
"#;

const WARM: &str = r#"
-- KEYS: stock, limit, buyers, resv, restocked, soldout, version
-- ARGV: stock, limit
-- A fresh sale, unless one is going: a buyer or a reservation recorded
-- (hashes vanish with their last field).
if redis.call('EXISTS', KEYS[1]) == 1
  and (redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[4]) == 1) then
  return 0
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
if tonumber(ARGV[1]) <= 0 then redis.call('SET', KEYS[6], '1') end
fresh_version(KEYS[7])
return 1
"#;

const ADJUST: &str = r#"
-- KEYS: stock, soldout, version; ARGV: stock seen, version seen, delta
local v = redis.call('GET', KEYS[1])
if not v or tonumber(v) ~= tonumber(ARGV[1]) then return 0 end
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[2] then return 0 end
local stock = tonumber(v) + tonumber(ARGV[3])
if stock < 0 then stock = 0 end
redis.call('SET', KEYS[1], stock)
if stock <= 0 then redis.call('SET', KEYS[2], '1') else redis.call('DEL', KEYS[2]) end
redis.call('INCR', KEYS[3])
return 1
"#;

/// The stock ledger in Redis.
pub struct RedisStockLedger {
    redis: RedisConn,
    reserve: Script,
    release: Script,
    restock: Script,
    rebuild: Script,
    warm: Script,
    adjust: Script,
}

impl RedisStockLedger {
    pub fn new(redis: RedisConn) -> Self {
        RedisStockLedger {
            redis,
            reserve: Script::new(RESERVE),
            release: Script::new(RELEASE),
            restock: Script::new(RESTOCK),
            rebuild: Script::new(&format!("{FRESH_VERSION}{REBUILD}")),
            warm: Script::new(&format!("{FRESH_VERSION}{WARM}")),
            adjust: Script::new(ADJUST),
        }
    }
}

#[async_trait]
impl StockLedger for RedisStockLedger {
    async fn warm(&self, promo: PromoId, stock: i64, per_user_limit: i64) -> CacheResult<bool> {
        let k = self.redis.promo_keys(promo);
        let mut inv = self.warm.prepare_invoke();
        k.load_into(&mut inv);
        inv.arg(stock).arg(per_user_limit);
        let mut c = self.redis.conn.clone();
        let loaded: i64 = inv
            .invoke_async(&mut c)
            .await
            .map_err(err("ledger warm-up failed"))?;
        Ok(loaded == 1)
    }

    async fn reserve(&self, batch: &[Reservation]) -> CacheResult<Vec<ReserveOutcome>> {
        let mut out = vec![ReserveOutcome::NotWarmed; batch.len()];
        // One script call per promo (a batch nearly always has one).
        let mut promos: Vec<PromoId> = batch.iter().map(|r| r.promo).collect();
        promos.sort();
        promos.dedup();
        for promo in promos {
            let idx: Vec<usize> = (0..batch.len())
                .filter(|&i| batch[i].promo == promo)
                .collect();
            let k = self.redis.promo_keys(promo);
            let mut inv = self.reserve.prepare_invoke();
            inv.key(&k.stock)
                .key(&k.limit)
                .key(&k.buyers)
                .key(&k.reservations)
                .key(&k.sold_out)
                .key(&k.version)
                .arg(idx.len());
            for &i in &idx {
                let r = &batch[i];
                inv.arg(r.user.0).arg(r.amount).arg(r.id.0);
            }
            let mut c = self.redis.conn.clone();
            let answers: Vec<i64> = inv
                .invoke_async(&mut c)
                .await
                .map_err(err("ledger reservation failed"))?;
            for (&i, a) in idx.iter().zip(answers) {
                out[i] = match a {
                    -1 => ReserveOutcome::SoldOut,
                    -2 => ReserveOutcome::AlreadyBought,
                    -3 => ReserveOutcome::NotWarmed,
                    -4 => ReserveOutcome::OverLimit,
                    remaining => ReserveOutcome::Reserved { remaining },
                };
            }
        }
        Ok(out)
    }

    async fn release(&self, promo: PromoId, id: StockLogId) -> CacheResult<i64> {
        let k = self.redis.promo_keys(promo);
        let mut c = self.redis.conn.clone();
        let units: i64 = self
            .release
            .key(&k.stock)
            .key(&k.buyers)
            .key(&k.reservations)
            .key(&k.sold_out)
            .key(&k.version)
            .arg(id.0)
            .invoke_async(&mut c)
            .await
            .map_err(err("ledger release failed"))?;
        Ok(units)
    }

    async fn reservations(&self, promo: PromoId, max: usize) -> CacheResult<ReservationPage> {
        // HSCAN, a thousand fields a step: a big hash never holds Redis up
        // (HKEYS would, for every reservation script behind it).
        let k = self.redis.promo_keys(promo);
        let mut c = self.redis.conn.clone();
        let mut ids = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<(i64, String)>) = ::redis::cmd("HSCAN")
                .arg(&k.reservations)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(err("ledger read failed"))?;
            ids.extend(page.into_iter().map(|(id, _)| StockLogId(id)));
            cursor = next;
            if cursor == 0 || ids.len() >= max {
                break;
            }
        }
        // HSCAN may return a field twice; the sweep's steps are idempotent,
        // but one look each is enough.
        ids.sort_unstable();
        ids.dedup();
        // Complete only when the scan went round (the cursor back at 0) and
        // nothing of what it found is cut off.
        let complete = cursor == 0 && ids.len() <= max;
        ids.truncate(max);
        Ok(ReservationPage { ids, complete })
    }

    async fn forget_committed(&self, promo: PromoId, ids: &[StockLogId]) -> CacheResult<()> {
        let k = self.redis.promo_keys(promo);
        let mut c = self.redis.conn.clone();
        for chunk in ids.chunks(1000) {
            ::redis::cmd("HDEL")
                .arg(&k.reservations)
                .arg(chunk.iter().map(|id| id.0).collect::<Vec<_>>())
                .query_async::<()>(&mut c)
                .await
                .map_err(err("ledger write failed"))?;
        }
        Ok(())
    }

    async fn restock(&self, promo: PromoId, id: StockLogId, amount: i64) -> CacheResult<bool> {
        let k = self.redis.promo_keys(promo);
        let mut c = self.redis.conn.clone();
        let done: i64 = self
            .restock
            .key(&k.stock)
            .key(&k.restocked)
            .key(&k.sold_out)
            .key(&k.version)
            .arg(id.0)
            .arg(amount)
            .invoke_async(&mut c)
            .await
            .map_err(err("ledger restock failed"))?;
        Ok(done == 1)
    }

    async fn restocked_count(&self, promo: PromoId) -> CacheResult<Option<u64>> {
        let k = self.redis.promo_keys(promo);
        let mut c = self.redis.conn.clone();
        let (loaded, n): (bool, u64) = ::redis::pipe()
            .atomic()
            .cmd("EXISTS")
            .arg(&k.stock)
            .cmd("SCARD")
            .arg(&k.restocked)
            .query_async(&mut c)
            .await
            .map_err(err("ledger read failed"))?;
        Ok(loaded.then_some(n))
    }

    async fn not_restocked(
        &self,
        promo: PromoId,
        ids: &[StockLogId],
    ) -> CacheResult<Vec<StockLogId>> {
        let k = self.redis.promo_keys(promo);
        let mut c = self.redis.conn.clone();
        let mut missing = Vec::new();
        for chunk in ids.chunks(1000) {
            // One round trip a chunk, the promo's presence read with it: a
            // ledger dropped between two chunks answers none.
            let (loaded, member): (bool, Vec<bool>) = ::redis::pipe()
                .atomic()
                .cmd("EXISTS")
                .arg(&k.stock)
                .cmd("SMISMEMBER")
                .arg(&k.restocked)
                .arg(chunk.iter().map(|id| id.0).collect::<Vec<_>>())
                .query_async(&mut c)
                .await
                .map_err(err("ledger read failed"))?;
            if !loaded {
                return Ok(Vec::new());
            }
            missing.extend(
                chunk
                    .iter()
                    .zip(member)
                    .filter(|(_, given_back)| !given_back)
                    .map(|(id, _)| *id),
            );
        }
        Ok(missing)
    }

    async fn rebuild(
        &self,
        promo: PromoId,
        per_user_limit: i64,
        journal: &SaleJournal,
    ) -> CacheResult<bool> {
        let k = self.redis.promo_keys(promo);
        let mut inv = self.rebuild.prepare_invoke();
        k.load_into(&mut inv);
        inv.arg(journal.ledger_stock())
            .arg(per_user_limit)
            .arg(journal.open.len());
        for (id, user, amount) in &journal.open {
            inv.arg(id.0).arg(user.0).arg(*amount);
        }
        inv.arg(journal.buyers.len());
        for (user, units) in &journal.buyers {
            inv.arg(user.0).arg(*units);
        }
        inv.arg(journal.restocked.len());
        for id in &journal.restocked {
            inv.arg(id.0);
        }
        let mut c = self.redis.conn.clone();
        let loaded: i64 = inv
            .invoke_async(&mut c)
            .await
            .map_err(err("ledger rebuild failed"))?;
        Ok(loaded == 1)
    }

    async fn adjust(&self, promo: PromoId, seen: LedgerLevel, delta: i64) -> CacheResult<bool> {
        let k = self.redis.promo_keys(promo);
        let mut c = self.redis.conn.clone();
        let done: i64 = self
            .adjust
            .key(&k.stock)
            .key(&k.sold_out)
            .key(&k.version)
            .arg(seen.stock)
            .arg(seen.version)
            .arg(delta)
            .invoke_async(&mut c)
            .await
            .map_err(err("ledger adjust failed"))?;
        Ok(done == 1)
    }

    async fn stock(&self, promo: PromoId) -> CacheResult<Option<i64>> {
        let mut c = self.redis.conn.clone();
        ::redis::cmd("GET")
            .arg(self.redis.promo_keys(promo).stock)
            .query_async(&mut c)
            .await
            .map_err(err("ledger read failed"))
    }

    async fn level(&self, promo: PromoId) -> CacheResult<Option<LedgerLevel>> {
        let k = self.redis.promo_keys(promo);
        let mut c = self.redis.conn.clone();
        let (stock, version): (Option<i64>, Option<u64>) = ::redis::cmd("MGET")
            .arg(&k.stock)
            .arg(&k.version)
            .query_async(&mut c)
            .await
            .map_err(err("ledger read failed"))?;
        // A ledger a build before versions loaded has none yet: 0, which
        // its first change moves on.
        Ok(stock.map(|stock| LedgerLevel {
            stock,
            version: version.unwrap_or(0),
        }))
    }

    async fn sold_out(&self, promo: PromoId) -> CacheResult<bool> {
        let mut c = self.redis.conn.clone();
        let n: i64 = ::redis::cmd("EXISTS")
            .arg(self.redis.promo_keys(promo).sold_out)
            .query_async(&mut c)
            .await
            .map_err(err("ledger read failed"))?;
        Ok(n == 1)
    }

    async fn ping(&self) -> CacheResult<()> {
        self.redis.ping().await
    }
}

/// KEYS: gate counter, holder, record. ARGV: value, record TTL in ms,
/// holder TTL in ms. The holder's value is its record's key (as given,
/// prefixed). 2: held already (its previous record replaced), 1: granted,
/// 0: refused, -1: no gate.
const TAKE_PERMIT_AND_SET: &str = r#"
local previous = redis.call('GET', KEYS[2])
if previous then
  if previous ~= KEYS[3] then
    redis.call('DEL', previous)
  end
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], KEYS[3], 'KEEPTTL')
  return 2
end
local gate = redis.call('GET', KEYS[1])
if not gate then return -1 end
local v = tonumber(gate)
if v > 0 then
  redis.call('DECR', KEYS[1])
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], KEYS[3], 'PX', ARGV[3])
  return 1
end
return 0
"#;

/// KEYS: holder, record. ARGV: value, TTL in ms. Sets the record while the
/// holder names it (its prefixed key, as TAKE_PERMIT_AND_SET stores it).
const SET_IF_HELD: &str = r#"
if redis.call('GET', KEYS[1]) == KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: key. ARGV: the value it must hold to be deleted.
const DELETE_IF_EQUALS: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// KEYS: lease. ARGV: holder, ttl ms. 1 renewed, 2 taken again, 0 another
/// holder's.
const RENEW_LEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"#;

/// KEYS: counter. ARGV: delta. INCRBY keeps the key's TTL.
const ADD_TO_COUNTER: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCRBY', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// Key/value state in Redis.
pub struct RedisKvStore {
    redis: RedisConn,
    take_permit_and_set: Script,
    set_if_held: Script,
    delete_if_equals: Script,
    renew_lease: Script,
    add_to_counter: Script,
}

impl RedisKvStore {
    pub fn new(redis: RedisConn) -> Self {
        RedisKvStore {
            redis,
            take_permit_and_set: Script::new(TAKE_PERMIT_AND_SET),
            set_if_held: Script::new(SET_IF_HELD),
            delete_if_equals: Script::new(DELETE_IF_EQUALS),
            renew_lease: Script::new(RENEW_LEASE),
            add_to_counter: Script::new(ADD_TO_COUNTER),
        }
    }

    async fn set_px(
        &self,
        key: &str,
        value: impl ::redis::ToRedisArgs + Send + Sync,
        ttl: Duration,
    ) -> CacheResult<()> {
        let mut c = self.redis.conn.clone();
        ::redis::cmd("SET")
            .arg(self.redis.key(key))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut c)
            .await
            .map_err(err("Redis SET failed"))
    }
}

fn millis(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

#[async_trait]
impl KvStore for RedisKvStore {
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<()> {
        self.set_px(key, value, ttl).await
    }

    async fn get(&self, key: &str) -> CacheResult<Option<String>> {
        let mut c = self.redis.conn.clone();
        ::redis::cmd("GET")
            .arg(self.redis.key(key))
            .query_async(&mut c)
            .await
            .map_err(err("Redis GET failed"))
    }

    async fn take(&self, key: &str) -> CacheResult<Option<String>> {
        let mut c = self.redis.conn.clone();
        ::redis::cmd("GETDEL")
            .arg(self.redis.key(key))
            .query_async(&mut c)
            .await
            .map_err(err("Redis GETDEL failed"))
    }

    async fn delete(&self, key: &str) -> CacheResult<()> {
        let mut c = self.redis.conn.clone();
        ::redis::cmd("DEL")
            .arg(self.redis.key(key))
            .query_async::<()>(&mut c)
            .await
            .map_err(err("Redis DEL failed"))
    }

    async fn set_if_absent(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<bool> {
        let mut c = self.redis.conn.clone();
        let set: Option<String> = ::redis::cmd("SET")
            .arg(self.redis.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut c)
            .await
            .map_err(err("Redis SET NX failed"))?;
        Ok(set.is_some())
    }

    async fn delete_if_equals(&self, key: &str, value: &str) -> CacheResult<bool> {
        let mut c = self.redis.conn.clone();
        let n: i64 = self
            .delete_if_equals
            .key(self.redis.key(key))
            .arg(value)
            .invoke_async(&mut c)
            .await
            .map_err(err("Redis conditional DEL failed"))?;
        Ok(n == 1)
    }

    async fn renew_lease(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<LeaseRenewal> {
        let mut c = self.redis.conn.clone();
        let n: i64 = self
            .renew_lease
            .key(self.redis.key(key))
            .arg(value)
            .arg(millis(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(err("Redis lease renewal failed"))?;
        Ok(match n {
            1 => LeaseRenewal::Renewed,
            2 => LeaseRenewal::Retaken,
            _ => LeaseRenewal::Lost,
        })
    }

    async fn set_counter(&self, key: &str, value: i64, ttl: Duration) -> CacheResult<()> {
        self.set_px(key, value, ttl).await
    }

    async fn set_counter_if_absent(
        &self,
        key: &str,
        value: i64,
        ttl: Duration,
    ) -> CacheResult<bool> {
        let mut c = self.redis.conn.clone();
        let set: Option<String> = ::redis::cmd("SET")
            .arg(self.redis.key(key))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .arg("NX")
            .query_async(&mut c)
            .await
            .map_err(err("Redis SET NX failed"))?;
        Ok(set.is_some())
    }

    async fn add_to_counter(&self, key: &str, delta: i64) -> CacheResult<bool> {
        let mut c = self.redis.conn.clone();
        let added: i64 = self
            .add_to_counter
            .key(self.redis.key(key))
            .arg(delta)
            .invoke_async(&mut c)
            .await
            .map_err(err("Redis counter failed"))?;
        Ok(added == 1)
    }

    async fn take_permit_and_set(
        &self,
        gate: &str,
        holder: &str,
        holder_ttl: Duration,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<Permit> {
        let mut c = self.redis.conn.clone();
        let answer: i64 = self
            .take_permit_and_set
            .key(self.redis.key(gate))
            .key(self.redis.key(holder))
            .key(self.redis.key(key))
            .arg(value)
            .arg(millis(ttl))
            .arg(millis(holder_ttl))
            .invoke_async(&mut c)
            .await
            .map_err(err("Redis gate counter failed"))?;
        Ok(match answer {
            2 => Permit::Held,
            1 => Permit::Granted,
            -1 => Permit::Missing,
            _ => Permit::Refused,
        })
    }

    async fn set_if_held(
        &self,
        holder: &str,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<bool> {
        let mut c = self.redis.conn.clone();
        let n: i64 = self
            .set_if_held
            .key(self.redis.key(holder))
            .key(self.redis.key(key))
            .arg(value)
            .arg(millis(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(err("Redis conditional SET failed"))?;
        Ok(n == 1)
    }

    async fn hash_add(&self, key: &str, deltas: &[(&str, i64)], ttl: Duration) -> CacheResult<()> {
        let key = self.redis.key(key);
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for (field, delta) in deltas {
            pipe.cmd("HINCRBY")
                .arg(&key)
                .arg(*field)
                .arg(*delta)
                .ignore();
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(millis(ttl)).ignore();
        let mut c = self.redis.conn.clone();
        pipe.query_async::<()>(&mut c)
            .await
            .map_err(err("Redis HINCRBY failed"))
    }

    async fn hash_set(
        &self,
        key: &str,
        field: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<()> {
        let key = self.redis.key(key);
        let mut c = self.redis.conn.clone();
        ::redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&key)
            .arg(field)
            .arg(value)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(millis(ttl))
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(err("Redis HSET failed"))
    }

    async fn hash_delete(&self, key: &str, field: &str) -> CacheResult<()> {
        let mut c = self.redis.conn.clone();
        ::redis::cmd("HDEL")
            .arg(self.redis.key(key))
            .arg(field)
            .query_async::<()>(&mut c)
            .await
            .map_err(err("Redis HDEL failed"))
    }

    async fn hash_get_all(&self, key: &str) -> CacheResult<Vec<(String, String)>> {
        let mut c = self.redis.conn.clone();
        ::redis::cmd("HGETALL")
            .arg(self.redis.key(key))
            .query_async(&mut c)
            .await
            .map_err(err("Redis HGETALL failed"))
    }

    async fn ping(&self) -> CacheResult<()> {
        self.redis.ping().await
    }
}

const GCRA: &str = r#"
-- KEYS[1]: the bucket; ARGV: emission interval (us), burst, permits wanted
-- Generic cell rate algorithm on the server's clock: every instance sees
-- the same bucket and the same time. Grants up to ARGV[3] permits (as many
-- as the bucket holds) and answers how many.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((burst * interval - (tat - now)) / interval)
if room < 1 then return 0 end
local granted = math.min(wanted, room)
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return granted
"#;

/// Permits a busy rule takes from the shared bucket in one round trip, and
/// how long this process may use them.
const LEASE_MAX: u32 = 32;
const LEASE_TTL: Duration = Duration::from_millis(50);

/// Token buckets in Redis: one limit across every instance.
///
/// A rule of at least 1,000 events a second (the global order and token
/// rules) is not asked per event: a check that finds no permit left here
/// takes up to `LEASE_MAX` from the shared bucket at once and spends them
/// over at most `LEASE_TTL`, so a crowd costs one round trip per lease, not
/// one per request. Permits are taken from the bucket before they are
/// used, and an unused one lapses: the limit across every instance holds.
pub struct RedisRateLimiter {
    redis: RedisConn,
    gcra: Script,
    leases: parking_lot::Mutex<std::collections::HashMap<String, Lease>>,
}

struct Lease {
    left: u32,
    until: std::time::Instant,
}

impl RedisRateLimiter {
    pub fn new(redis: RedisConn) -> Self {
        RedisRateLimiter {
            redis,
            gcra: Script::new(GCRA),
            leases: Default::default(),
        }
    }

    /// The permits one round trip takes for `rule`: 1 unless it is busy.
    fn lease_size(rule: &RateRule) -> u32 {
        let per_sec = f64::from(rule.limit) / rule.period.as_secs_f64().max(1e-6);
        if per_sec < 1_000.0 {
            return 1;
        }
        (rule.limit / 100).clamp(1, LEASE_MAX)
    }

    async fn take(&self, rule: &RateRule, bucket: &str, wanted: u32) -> CacheResult<u32> {
        let limit = rule.limit.max(1);
        let interval_us = ((rule.period.as_micros() as u64) / u64::from(limit)).max(1);
        let mut c = self.redis.conn.clone();
        let granted: i64 = self
            .gcra
            .key(self.redis.key(bucket))
            .arg(interval_us)
            .arg(limit)
            .arg(wanted.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(err("Redis rate limit failed"))?;
        Ok(granted.clamp(0, i64::from(wanted.max(1))) as u32)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, rule: &RateRule, key: &str) -> CacheResult<bool> {
        let bucket = format!("rate:{}:{}", rule.name, key);
        let size = Self::lease_size(rule);
        if size == 1 {
            return Ok(self.take(rule, &bucket, 1).await? == 1);
        }
        {
            let mut leases = self.leases.lock();
            if let Some(l) = leases.get_mut(&bucket) {
                if l.left > 0 && l.until > std::time::Instant::now() {
                    l.left -= 1;
                    return Ok(true);
                }
            }
        }
        let granted = self.take(rule, &bucket, size).await?;
        if granted == 0 {
            return Ok(false);
        }
        if granted > 1 {
            let now = std::time::Instant::now();
            let mut leases = self.leases.lock();
            let l = leases.entry(bucket).or_insert(Lease {
                left: 0,
                until: now,
            });
            // Permits of a lapsed lease are not carried over.
            if l.until <= now {
                l.left = 0;
            }
            l.left += granted - 1;
            l.until = now + LEASE_TTL;
        }
        Ok(true)
    }
}
