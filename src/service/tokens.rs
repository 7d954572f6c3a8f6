//! The gates in front of the order path: a captcha per (user, promo), and
//! the seckill token — single use, short-lived, bound to (user, promo, item),
//! handed out to at most stock × gate factor buyers per promo.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::catalog::{gate_key, gate_permits, gate_ttl, CatalogService};
use super::users::random_token;
use super::{Context, ServiceError, ServiceResult};
use crate::cache::{Permit, RateRule};
use crate::domain::{ItemId, Promo, PromoId, UserId};

pub struct TokenService {
    cx: Context,
    catalog: Arc<CatalogService>,
    token_rule: RateRule,
    captcha_rule: RateRule,
    /// This instance's places for captchas being drawn
    /// (`captcha_max_in_flight`).
    drawing: Arc<tokio::sync::Semaphore>,
}

/// A seckill token handed to a buyer.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

fn captcha_key(user: UserId, promo: PromoId) -> String {
    format!("captcha:{promo}:{user}")
}

fn token_key(token: &str) -> String {
    format!("token:{token}")
}

/// Set when a buyer's first token of a promo takes its gate permit: later
/// tokens of that buyer and promo take none.
fn holder_key(user: UserId, promo: PromoId) -> String {
    format!("token-holder:{promo}:{user}")
}

fn binding(user: UserId, promo: PromoId, item: ItemId) -> String {
    format!("{user}:{promo}:{item}")
}

impl TokenService {
    pub fn new(cx: Context, catalog: Arc<CatalogService>) -> Self {
        let token_rule = RateRule {
            name: "tokens",
            limit: cx.config.token_rate_per_sec,
            period: Duration::from_secs(1),
        };
        let captcha_rule = RateRule {
            name: "captcha_per_user",
            limit: cx.config.captcha_per_user_per_minute,
            period: Duration::from_secs(60),
        };
        let drawing = Arc::new(tokio::sync::Semaphore::new(
            cx.config.captcha_max_in_flight as usize,
        ));
        TokenService {
            cx,
            catalog,
            token_rule,
            captcha_rule,
            drawing,
        }
    }

    /// Draws a new captcha for (user, promo) and returns it as PNG; the
    /// previous one for that pair is replaced.
    pub async fn captcha(&self, user: UserId, promo: PromoId) -> ServiceResult<Vec<u8>> {
        let busy = || {
            metrics::counter!("seckill_captchas_shed_total").increment(1);
            ServiceError::RateLimited("too many captchas being drawn; retry shortly")
        };
        // A busy instance turns the buyer away first, having spent none of
        // their own allowance; the place itself is taken only for the
        // drawing, so a flood one account's limit refuses never holds one.
        if self.drawing.available_permits() == 0 {
            return Err(busy());
        }
        // The buyer's limit before the lookup: made-up promo ids cost
        // that buyer's share too.
        if !self
            .cx
            .ports
            .limiter
            .check(&self.captcha_rule, &user.0.to_string())
            .await?
        {
            return Err(ServiceError::limit_reached(
                &self.captcha_rule,
                "too many captchas drawn; wait a moment",
            ));
        }
        self.catalog.promo(promo).await?;
        // Held by the drawing itself: a request cut off meanwhile does not
        // free its place before the core does.
        let place = self
            .drawing
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let (answer, png) = tokio::task::spawn_blocking(move || {
            let _place = place;
            let mut c = captcha::Captcha::new();
            c.add_chars(5)
                .apply_filter(captcha::filters::Noise::new(0.2))
                .apply_filter(captcha::filters::Wave::new(2.0, 12.0).horizontal())
                .view(200, 70);
            (c.chars_as_string(), c.as_png())
        })
        .await
        .map_err(|e| ServiceError::Internal(Box::new(e)))?;
        let png =
            png.ok_or_else(|| ServiceError::Internal("captcha PNG encoding failed".into()))?;
        if self.cx.config.captcha_log_answers {
            tracing::info!(user_id = %user, promo_id = %promo, answer = %answer, "captcha drawn (SECKILL_CAPTCHA_LOG_ANSWERS)");
        }
        self.cx
            .ports
            .kv
            .set(
                &captcha_key(user, promo),
                &answer.to_lowercase(),
                Duration::from_secs(self.cx.config.captcha_ttl_secs),
            )
            .await?;
        Ok(png)
    }

    /// Hands out a seckill token: the promo sells now, the item is the
    /// promo's, this instance's strategy sells it (the one it was published
    /// under keeps stock in the same place), the captcha is right (when
    /// enabled), the promo is not sold out and its gate counter has a permit
    /// left.
    pub async fn issue(
        &self,
        user: UserId,
        promo_id: PromoId,
        item_id: ItemId,
        captcha: Option<&str>,
    ) -> ServiceResult<IssuedToken> {
        let promo = self.catalog.promo(promo_id).await?;
        // In process, before the captcha: a 429 here costs the buyer none.
        self.cx.buyer_pace.check(user)?;
        if promo.item_id != item_id {
            return Err(ServiceError::Invalid(format!(
                "item {item_id} is not in promo {promo_id}"
            )));
        }
        promo.check_on_sale(Utc::now())?;
        self.catalog.check_sold_here(&promo)?;
        if self.cx.sold_out_here(promo_id).await? {
            return Err(ServiceError::SoldOut);
        }
        // The captcha first (taken on any attempt: one image, one guess), so
        // wrong guesses spend nobody's share of the shared rate limit.
        let solved = if self.cx.config.captcha_enabled {
            let given = captcha
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .ok_or(ServiceError::WrongCaptcha)?;
            let key = captcha_key(user, promo_id);
            let expected = self.cx.ports.kv.take(&key).await?;
            match expected {
                Some(answer) if answer == given.to_lowercase() => Some((key, answer)),
                _ => return Err(ServiceError::WrongCaptcha),
            }
        } else {
            None
        };
        let issued = self.issue_solved(user, &promo, item_id).await;
        // A buyer told to retry (429, or 503: nothing was written) keeps the
        // answer they solved, unless they drew another meanwhile.
        if let (
            Err(ServiceError::RateLimited(_) | ServiceError::Unavailable { .. }),
            Some((key, answer)),
        ) = (&issued, solved)
        {
            let ttl = Duration::from_secs(self.cx.config.captcha_ttl_secs);
            if let Err(e) = self.cx.ports.kv.set_if_absent(&key, &answer, ttl).await {
                tracing::debug!(error = %e, "captcha not given back; the buyer draws a new one");
            }
        }
        issued
    }

    /// [`issue`](Self::issue) once the captcha is solved: the shared rate
    /// limit, the sold-out flag and the gate.
    async fn issue_solved(
        &self,
        user: UserId,
        promo: &Promo,
        item_id: ItemId,
    ) -> ServiceResult<IssuedToken> {
        let promo_id = promo.id;
        if !self.cx.ports.limiter.check(&self.token_rule, "all").await? {
            return Err(ServiceError::RateLimited(
                "too many requests; retry shortly",
            ));
        }
        // Another instance may have sold the last unit: the ledger's flag is
        // asked at most once per `sold_out_poll_ms` per promo (a token handed
        // out meanwhile only meets "sold out" at the order). Only a sale sold
        // from the ledger: a pure-DB sale's ledger (warmed at publish, or
        // rebuilt after Redis was lost) is never told of its cancellations,
        // so its flag would refuse units given back for good.
        if self.cx.config.order_strategy.keeps_ledger()
            && self.cx.sold_out_elsewhere(promo_id).await?
        {
            return Err(ServiceError::SoldOut);
        }
        // The permit and the token's record are one step: a permit is never
        // spent on a token that was not recorded. The gate counts buyers,
        // not requests: a buyer's later tokens of this promo (a new one
        // after one expired, or after a failed order) take no permit, so
        // one account asking again and again cannot spend the gate that
        // lets the crowd in; and each replaces the buyer's last one, so it
        // cannot fill the store with live tokens either. The mark lasts
        // until the promo ends.
        let token = random_token();
        let ttl = Duration::from_secs(self.cx.config.seckill_token_ttl_secs);
        // The answer's expiry taken before the write: never later than the
        // record's.
        let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
        let until_end = (promo.end_at - Utc::now()).to_std().unwrap_or_default();
        let (gate, holder) = (gate_key(promo_id), holder_key(user, promo_id));
        let (record, bound) = (token_key(&token), binding(user, promo_id, item_id));
        let take = || {
            self.cx.ports.kv.take_permit_and_set(
                &gate,
                &holder,
                until_end.max(ttl),
                &record,
                &bound,
                ttl,
            )
        };
        let mut permit = take().await?;
        if permit == Permit::Missing {
            self.set_lost_gate(promo, &gate).await?;
            permit = take().await?;
        }
        if permit != Permit::Granted && permit != Permit::Held {
            // No permit: the gate is spent, or the cache lost it with the
            // ledger (then it is rebuilt from the DB; 503 until then).
            if self.cx.ports.ledger.stock(promo_id).await?.is_none() {
                return Err(self.cx.recovery.reload(&self.cx, promo_id));
            }
            return Err(ServiceError::SoldOut);
        }
        Ok(IssuedToken { token, expires_at })
    }

    /// Sets again a promo's gate the cache does not hold. Lost with the
    /// ledger (the cache restarted empty), the ledger is rebuilt from the DB
    /// first (503 until then). Lost alone — a rebuild that failed between
    /// the ledger and its gate, a gate evicted — no token would ever be
    /// handed out again: it is set as a rebuild sets it, from the ledger's
    /// stock (by whichever request gets there first), a pure-DB sale's from
    /// the DB's: its ledger is never told of its sales.
    async fn set_lost_gate(&self, promo: &Promo, gate: &str) -> ServiceResult<()> {
        let Some(ledger_stock) = self.cx.ports.ledger.stock(promo.id).await? else {
            return Err(self.cx.recovery.reload(&self.cx, promo.id));
        };
        let stock = if promo.sold_with_ledger(self.cx.config.order_strategy) {
            ledger_stock
        } else {
            let item = self.cx.ports.store.item(promo.item_id).await?;
            item.map_or(0, |i| i.stock)
        };
        let permits = gate_permits(&self.cx.config, stock);
        if self
            .cx
            .ports
            .kv
            .set_counter_if_absent(gate, permits, gate_ttl(promo))
            .await?
        {
            tracing::warn!(promo_id = %promo.id, stock, permits,
                "the promo's token gate was missing beside its ledger; set again from the stock");
        }
        Ok(())
    }

    /// Makes a used-up token good again (its order failed for a reason not
    /// the buyer's: 503, contention), for its full TTL — unless the buyer
    /// has since asked for another (one live token per buyer and promo).
    /// Best effort.
    pub async fn give_back(&self, token: &str, user: UserId, promo: PromoId, item: ItemId) {
        let ttl = Duration::from_secs(self.cx.config.seckill_token_ttl_secs);
        match self
            .cx
            .ports
            .kv
            .set_if_held(
                &holder_key(user, promo),
                &token_key(token),
                &binding(user, promo, item),
                ttl,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::debug!("seckill token replaced since; not given back"),
            Err(e) => {
                tracing::debug!(error = %e, "seckill token not given back; the buyer asks a new one")
            }
        }
    }

    /// [`give_back`](Self::give_back) in a task of its own, tracked by the
    /// context's background tasks (a shutdown waits for it): for a caller
    /// that cannot wait, such as a request's drop. Outside a runtime (the
    /// process is ending) the token is not given back; it would lapse anyway.
    pub fn give_back_later(
        self: &Arc<Self>,
        token: String,
        user: UserId,
        promo: PromoId,
        item: ItemId,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tokens = self.clone();
        self.cx.background.spawn_on(
            async move { tokens.give_back(&token, user, promo, item).await },
            &runtime,
        );
    }

    /// Uses a token up: valid only once, and only for the (user, promo,
    /// item) it was issued for. A token presented for another binding is
    /// used up all the same (it was leaked or forged).
    pub async fn consume(
        &self,
        token: &str,
        user: UserId,
        promo: PromoId,
        item: ItemId,
    ) -> ServiceResult<()> {
        if token.is_empty() || token.len() > 128 {
            return Err(ServiceError::InvalidToken);
        }
        match self.cx.ports.kv.take(&token_key(token)).await? {
            Some(b) if b == binding(user, promo, item) => Ok(()),
            _ => Err(ServiceError::InvalidToken),
        }
    }
}
