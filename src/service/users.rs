//! Accounts and sessions: one-time-code registration, argon2 passwords,
//! random session tokens kept in the shared key/value store with a TTL.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use rand::Rng;

use super::{Context, ServiceError, ServiceResult};
use crate::cache::RateRule;
use crate::domain::user::{check_name, check_password, check_profile};
use crate::domain::{NewUser, Phone, User, UserId};

/// A registration request.
#[derive(Debug, Clone)]
pub struct Registration {
    pub phone: String,
    pub otp: String,
    pub name: String,
    pub password: String,
    pub gender: Option<String>,
    pub age: Option<i32>,
}

/// An account for bulk creation (support, drills).
#[derive(Debug, Clone)]
pub struct BulkUser {
    pub phone: String,
    pub name: String,
    pub password: String,
}

pub struct UserService {
    cx: Context,
    /// Sessions seen recently (token → user), so that the order path does
    /// not ask the shared store on every request. Entries live at most
    /// `session_cache_ttl_ms`; a log-out drops them on every instance (a
    /// broadcast), so a session ends everywhere within that bound at worst.
    /// Keyed by the token's digest ([`session_digest`]): the broadcast
    /// carries the digest, never the bearer token itself.
    sessions: Option<moka::sync::Cache<[u8; 32], UserId>>,
    /// See [`UserService::unknown_phone_hash`].
    unknown_phone_hash: tokio::sync::OnceCell<String>,
    /// Places for password hashes computed at once
    /// (`password_hashes_max_in_flight`): a flood of logins queues here
    /// rather than run hundreds of hashes, each holding its memory.
    hashing: Arc<tokio::sync::Semaphore>,
    /// Places to wait for one of those, for logins and sign-ups
    /// (`password_hashes_max_waiting`; none: no bound).
    hash_queue: Option<Arc<tokio::sync::Semaphore>>,
}

/// A session token's SHA-256, hex: names a session in the log-out broadcast
/// (which the broker stores) without giving the credential away.
pub fn session_digest(token: &str) -> String {
    digest_hex(&digest_of(token))
}

fn digest_hex(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for &b in digest {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

/// The digest itself, the session cache's key: every authenticated
/// request looks it up, and the bytes need no string built or hashed
/// twice as long.
fn digest_of(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// [`session_digest`]'s hex read back; `None` when it is not 64 hex digits.
fn digest_from_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn session_key(token: &str) -> String {
    format!("session:{token}")
}

/// A random URL-safe token of 32 bytes.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl UserService {
    pub fn new(cx: Context) -> Self {
        let ttl = cx.config.session_cache_ttl_ms;
        let sessions = (ttl > 0 && cx.config.session_cache_capacity > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cx.config.session_cache_capacity)
                .time_to_live(Duration::from_millis(ttl))
                .build()
        });
        let hashing = Arc::new(tokio::sync::Semaphore::new(
            cx.config.password_hashes_max_in_flight.max(1) as usize,
        ));
        let waiting = cx.config.password_hashes_max_waiting;
        UserService {
            cx,
            sessions,
            unknown_phone_hash: tokio::sync::OnceCell::new(),
            hashing,
            hash_queue: (waiting != 0)
                .then(|| Arc::new(tokio::sync::Semaphore::new(waiting as usize))),
        }
    }

    fn argon2(&self) -> ServiceResult<Argon2<'static>> {
        let c = &self.cx.config;
        // Checked at start-up (`Config::validate`); a failure here is a bug,
        // never a silent fall-back to other parameters.
        let params = Params::new(c.argon2_memory_kib, c.argon2_iterations, 1, None)
            .map_err(|e| ServiceError::Internal(format!("Argon2 parameters: {e}").into()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// A hash no password matches (of random bytes), made once with this
    /// instance's parameters: what an unknown phone's login is checked
    /// against.
    async fn unknown_phone_hash(&self) -> ServiceResult<&str> {
        self.unknown_phone_hash
            .get_or_try_init(|| self.hash_password(random_token()))
            .await
            .map(String::as_str)
    }

    async fn hash_password(&self, password: String) -> ServiceResult<String> {
        let argon = self.argon2()?;
        let place = self.hashing_place_or_busy().await?;
        tokio::task::spawn_blocking(move || {
            let _place = place;
            let salt = SaltString::generate(&mut OsRng);
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .map_err(|e| ServiceError::Internal(Box::new(e)))?
        .map_err(|e| ServiceError::Internal(e.to_string().into()))
    }

    /// A place to hash in, held by the blocking task until its hash is done
    /// (a request cut off meanwhile does not free it early).
    async fn hashing_place(&self) -> ServiceResult<tokio::sync::OwnedSemaphorePermit> {
        self.hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ServiceError::Internal(Box::new(e)))
    }

    /// A place to hash in for a login or a sign-up: 429 at once when
    /// `password_hashes_max_waiting` requests wait for one already.
    async fn hashing_place_or_busy(&self) -> ServiceResult<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(place) = self.hashing.clone().try_acquire_owned() {
            return Ok(place);
        }
        // A place in the queue, held while waiting for a hashing one.
        let _waiting = match &self.hash_queue {
            Some(queue) => Some(queue.clone().try_acquire_owned().map_err(|_| {
                metrics::counter!("seckill_password_hash_refusals_total").increment(1);
                ServiceError::RateLimited("too many logins and sign-ups at once; retry in a moment")
            })?),
            None => None,
        };
        self.hashing_place().await
    }

    /// Sends a one-time code to a phone, at most `otp_per_phone_per_hour`.
    /// A per-client-address limit; skipped when the limit is 0 or the
    /// address unknown.
    async fn per_client(
        &self,
        name: &'static str,
        limit: u32,
        period: Duration,
        client: &str,
        refusal: &'static str,
    ) -> ServiceResult<()> {
        if limit == 0 || client.is_empty() {
            return Ok(());
        }
        let rule = RateRule {
            name,
            limit,
            period,
        };
        if !self
            .cx
            .ports
            .limiter
            .check(&rule, &client_key(client))
            .await?
        {
            return Err(ServiceError::limit_reached(&rule, refusal));
        }
        Ok(())
    }

    /// Sends a one-time code; limited per phone and per client address
    /// (`client`: empty when unknown).
    pub async fn send_otp(&self, phone: &str, client: &str) -> ServiceResult<()> {
        let phone = Phone::parse(phone)?;
        self.per_client(
            "otp_per_ip",
            self.cx.config.otp_per_ip_per_hour,
            Duration::from_secs(3600),
            client,
            "too many codes asked from this address; try later",
        )
        .await?;
        let rule = RateRule {
            name: "otp_per_phone",
            limit: self.cx.config.otp_per_phone_per_hour,
            period: Duration::from_secs(3600),
        };
        if !self.cx.ports.limiter.check(&rule, phone.as_str()).await? {
            return Err(ServiceError::limit_reached(
                &rule,
                "too many codes asked for this phone; try later",
            ));
        }
        let code = format!("{:06}", rand::thread_rng().gen_range(0..1_000_000));
        self.cx
            .ports
            .kv
            .set(
                &format!("otp:{}", phone.as_str()),
                &code,
                Duration::from_secs(self.cx.config.otp_ttl_secs),
            )
            .await?;
        self.cx
            .ports
            .otp
            .send(phone.as_str(), &code)
            .await
            .map_err(|e| ServiceError::Unavailable {
                context: "the code could not be sent",
                source: Some(e.into()),
            })
    }

    /// Registers a user whose one-time code matches (the code is used up by
    /// any attempt, right or wrong).
    pub async fn register(&self, r: Registration) -> ServiceResult<User> {
        let phone = Phone::parse(&r.phone)?;
        check_name(&r.name)?;
        check_password(&r.password)?;
        check_profile(r.gender.as_deref(), r.age)?;
        let otp_key = format!("otp:{}", phone.as_str());
        let stored = self.cx.ports.kv.take(&otp_key).await?;
        if stored.as_deref() != Some(r.otp.trim()) || r.otp.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "one-time code wrong or expired; ask for a new one".into(),
            ));
        }
        let created = async {
            let user = NewUser {
                phone,
                name: r.name.trim().to_owned(),
                gender: r.gender,
                age: r.age,
                password_hash: self.hash_password(r.password).await?,
            };
            self.cx
                .ports
                .store
                .create_user(&user)
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::Conflict(_) => {
                        ServiceError::Conflict("this phone is already registered".into())
                    }
                    e => e.into(),
                })
        }
        .await;
        // The right code was used for nothing when the account could not
        // be written (503, 500): it stays good for a retry — unless a newer
        // code was asked for meanwhile. Best effort.
        if let (Err(e), Some(code)) = (&created, &stored) {
            if !matches!(e, ServiceError::Conflict(_)) {
                let ttl = Duration::from_secs(self.cx.config.otp_ttl_secs);
                if let Err(e) = self.cx.ports.kv.set_if_absent(&otp_key, code, ttl).await {
                    tracing::debug!(error = %e, "one-time code not given back");
                }
            }
        }
        created
    }

    /// Creates many accounts at once; phones already registered are
    /// skipped. Returns how many were created.
    pub async fn create_many(&self, users: Vec<BulkUser>) -> ServiceResult<u64> {
        if users.len() > self.cx.config.bulk_users_max {
            return Err(ServiceError::Invalid(format!(
                "at most {} users per request",
                self.cx.config.bulk_users_max
            )));
        }
        let mut phones = std::collections::HashSet::new();
        let mut parsed = Vec::with_capacity(users.len());
        for (i, u) in users.iter().enumerate() {
            parsed.push(
                Phone::parse(&u.phone)
                    .map_err(|e| ServiceError::Invalid(format!("users[{i}]: {}", e.0)))?,
            );
            check_name(&u.name)
                .map_err(|e| ServiceError::Invalid(format!("users[{i}]: {}", e.0)))?;
            check_password(&u.password)
                .map_err(|e| ServiceError::Invalid(format!("users[{i}]: {}", e.0)))?;
            if !phones.insert(u.phone.as_str()) {
                return Err(ServiceError::Invalid(format!(
                    "users[{i}]: phone listed twice"
                )));
            }
        }
        // One hash at a time in the instance's places for password hashes
        // (`password_hashes_max_in_flight`, first come first served): the
        // bulk request uses every free place while it runs, and a login or
        // sign-up meanwhile waits for one hash, not for the whole batch.
        // A request cut off (its deadline, the client gone) takes no more
        // places: the hashes running finish (each holds its place until
        // then), those not started never start.
        let argon = self.argon2()?;
        let mut hashing = tokio::task::JoinSet::new();
        for (i, u) in users.iter().enumerate() {
            let place = self.hashing_place().await?;
            let (argon, password) = (argon.clone(), u.password.clone());
            hashing.spawn_blocking(move || {
                let _place = place;
                let salt = SaltString::generate(&mut OsRng);
                argon
                    .hash_password(password.as_bytes(), &salt)
                    .map(|h| (i, h.to_string()))
            });
        }
        let mut hashes = vec![String::new(); users.len()];
        while let Some(done) = hashing.join_next().await {
            let (i, hash) = done
                .map_err(|e| ServiceError::Internal(Box::new(e)))?
                .map_err(|e| ServiceError::Internal(e.to_string().into()))?;
            hashes[i] = hash;
        }
        let all: Vec<NewUser> = users
            .iter()
            .zip(parsed)
            .zip(hashes)
            .map(|((u, phone), password_hash)| NewUser {
                phone,
                name: u.name.trim().to_owned(),
                gender: None,
                age: None,
                password_hash,
            })
            .collect();
        Ok(self.cx.ports.store.create_users(&all).await?)
    }

    /// Checks a phone and password and opens a session. Attempts are limited
    /// per phone, so passwords cannot be guessed at speed.
    pub async fn login(
        &self,
        phone: &str,
        password: &str,
        client: &str,
    ) -> ServiceResult<(String, User)> {
        const WRONG: ServiceError = ServiceError::Unauthenticated("wrong phone or password");
        let phone = Phone::parse(phone)?;
        // The bound sign-up checks (`check_password`): characters, not bytes.
        if password.is_empty() || password.chars().count() > 128 {
            return Err(WRONG);
        }
        let rule = RateRule {
            name: "login_per_phone",
            limit: self.cx.config.login_attempts_per_phone_per_minute,
            period: Duration::from_secs(60),
        };
        if !self.cx.ports.limiter.check(&rule, phone.as_str()).await? {
            return Err(ServiceError::limit_reached(
                &rule,
                "too many login attempts for this phone; wait a minute",
            ));
        }
        self.per_client(
            "login_per_ip",
            self.cx.config.login_attempts_per_ip_per_minute,
            Duration::from_secs(60),
            client,
            "too many login attempts from this address; wait a minute",
        )
        .await?;
        let user = self.cx.ports.store.user_by_phone(phone.as_str()).await?;
        // An unknown phone costs the same hash as a wrong password, so the
        // answer's time does not tell which phones have an account.
        let hash = match &user {
            Some(u) => u.password_hash.clone(),
            None => self.unknown_phone_hash().await?.to_owned(),
        };
        let password = password.to_owned();
        let argon = self.argon2()?;
        let place = self.hashing_place_or_busy().await?;
        let ok = tokio::task::spawn_blocking(move || {
            let _place = place;
            PasswordHash::new(&hash)
                .is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .map_err(|e| ServiceError::Internal(Box::new(e)))?;
        let Some(user) = user.filter(|_| ok) else {
            return Err(WRONG);
        };
        let token = random_token();
        self.cx
            .ports
            .kv
            .set(
                &session_key(&token),
                &user.id.0.to_string(),
                Duration::from_secs(self.cx.config.session_ttl_secs),
            )
            .await?;
        Ok((token, user))
    }

    /// Ends a session: gone from the shared store at once, and from every
    /// instance's session cache when the broadcast arrives (at worst when
    /// the entry's `session_cache_ttl_ms` runs out).
    pub async fn logout(&self, token: &str) -> ServiceResult<()> {
        self.cx.ports.kv.delete(&session_key(token)).await?;
        if let Some(c) = &self.sessions {
            let digest = digest_of(token);
            c.invalidate(&digest);
            if let Err(e) = self
                .cx
                .ports
                .bus
                .publish(crate::mq::Event::SessionEnded {
                    v: 1,
                    digest: digest_hex(&digest),
                })
                .await
            {
                tracing::warn!(error = %e, "log-out not broadcast; other instances forget the session within session_cache_ttl_ms");
            }
        }
        Ok(())
    }

    /// Drops this instance's cached copy of a session, named by its digest.
    pub fn forget_session(&self, digest: &str) {
        if let (Some(c), Some(d)) = (&self.sessions, digest_from_hex(digest)) {
            c.invalidate(&d);
        }
    }

    /// The user a session token belongs to; `None` when unknown or expired.
    pub async fn session_user(&self, token: &str) -> ServiceResult<Option<UserId>> {
        if token.is_empty() || token.len() > 128 {
            return Ok(None);
        }
        let digest = self.sessions.as_ref().map(|_| digest_of(token));
        if let (Some(c), Some(d)) = (&self.sessions, &digest) {
            if let Some(user) = c.get(d) {
                return Ok(Some(user));
            }
        }
        let v = self.cx.ports.kv.get(&session_key(token)).await?;
        let user = v.and_then(|s| s.parse().ok()).map(UserId);
        if let (Some(c), Some(d), Some(u)) = (&self.sessions, digest, user) {
            c.insert(d, u);
        }
        Ok(user)
    }

    pub async fn user(&self, id: UserId) -> ServiceResult<User> {
        self.cx
            .ports
            .store
            .user_by_id(id)
            .await?
            .ok_or(ServiceError::Unauthenticated(
                "the session's user no longer exists",
            ))
    }
}

/// The key a client address is limited under: an IPv6 address by its /64
/// (one subscriber's network: a client given a /64 has 2^64 addresses to
/// rotate through), anything else as it is.
fn client_key(client: &str) -> std::borrow::Cow<'_, str> {
    match client.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]).into()
        }
        _ => client.into(),
    }
}

#[cfg(test)]
mod digest_tests {
    #[test]
    fn a_session_is_named_by_the_sha256_of_its_token_in_hex() {
        assert_eq!(
            super::session_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_broadcast_digest_reads_back_as_the_cache_key() {
        for token in [
            "abc",
            "",
            "a-longer-token_with-URL-safe-characters-0123456789",
        ] {
            let hex = super::session_digest(token);
            assert_eq!(super::digest_from_hex(&hex), Some(super::digest_of(token)));
            assert_eq!(
                super::digest_from_hex(&hex.to_uppercase()),
                Some(super::digest_of(token))
            );
        }
        for bad in [
            "",
            "abc",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            &"é".repeat(32),
        ] {
            assert_eq!(super::digest_from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64() {
        use super::client_key;
        assert_eq!(client_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(client_key("2001:db8:1:2:ffff:1:2:3"), "2001:db8:1:2::/64");
        assert_eq!(client_key("2001:db8:1:3::1"), "2001:db8:1:3::/64");
        assert_eq!(client_key("203.0.113.7"), "203.0.113.7");
        assert_eq!(client_key("::ffff:203.0.113.7"), "::ffff:203.0.113.7");
    }
}
