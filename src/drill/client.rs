//! The drill's HTTP client: one keep-alive pool, one call per endpoint.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// What a request ended with.
#[derive(Debug, Clone)]
pub enum Outcome {
    Token(String),
    Created(String),
    /// Status and code of a refusal.
    Refused(u16, String),
    /// No answer (connection error, timeout).
    Failed(Failure),
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Connection,
}

impl Outcome {
    pub fn label(&self) -> String {
        match self {
            Outcome::Token(_) => "token".into(),
            Outcome::Created(_) => "created".into(),
            Outcome::Refused(s, code) => format!("{s} {code}"),
            Outcome::Failed(Failure::Timeout) => "no answer (timeout)".into(),
            Outcome::Failed(Failure::Connection) => "no answer (connection)".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub captcha_enabled: bool,
    pub per_user_limit: i64,
    pub order_strategy: String,
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    admin: String,
}

impl Api {
    pub fn new(base: &str, admin: &str, connections: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            // Above an instance's longest answer: its request deadline and, for an
            // order already committing, the grace (15 + 15 s by default).
            .timeout(Duration::from_secs(35))
            .build()?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            admin: admin.to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.http.get(self.url(path)).send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    pub async fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let v = self.get_json("/api/v1/config").await?;
        Ok(ClientConfig {
            captcha_enabled: v["captcha_enabled"].as_bool().unwrap_or(true),
            per_user_limit: v["per_user_limit"].as_i64().unwrap_or(1),
            order_strategy: v["order_strategy"].as_str().unwrap_or("unknown").to_owned(),
        })
    }

    pub async fn server_time(&self) -> anyhow::Result<DateTime<Utc>> {
        let v = self.get_json("/api/v1/time").await?;
        v["now"]
            .as_str()
            .context("time")?
            .parse()
            .context("server time")
    }

    /// An admin POST's status and JSON body (`null` when it has none).
    async fn admin_send(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await?;
        let status = r.status();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, v) = self.admin_send(path, &body).await?;
        if !status.is_success() {
            bail!("POST {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Creates accounts (`phones`, one password) in requests sized to take
    /// about two seconds each, whatever the server's password hashing costs
    /// (argon2 at its defaults is tens of milliseconds an account a core):
    /// the first request has 100, the next as many as the last one's pace
    /// allows (at most 5,000). A request the server cut off (503: its
    /// deadline) is sent again with a quarter as many — phones already
    /// registered are skipped, so nothing is created twice.
    pub async fn create_users(&self, phones: &[String], password: &str) -> anyhow::Result<()> {
        const AIM_SECS: f64 = 2.0;
        let path = "/api/v1/admin/users";
        let (mut size, mut at, mut cut_off) = (100usize, 0usize, 0u32);
        while at < phones.len() {
            let end = (at + size).min(phones.len());
            let users: Vec<_> = phones[at..end]
                .iter()
                .map(|p| json!({"phone": p, "name": "drill buyer", "password": password}))
                .collect();
            let started = Instant::now();
            let (status, v) = self.admin_send(path, &json!({ "users": users })).await?;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && size > 1 && cut_off < 8 {
                cut_off += 1;
                size = (size / 4).max(1);
                continue;
            }
            if !status.is_success() {
                bail!("POST {path}: {status} {v}");
            }
            let per_user = started.elapsed().as_secs_f64() / (end - at) as f64;
            size = ((AIM_SECS / per_user.max(1e-6)) as usize).clamp(1, 5000);
            at = end;
            cut_off = 0;
        }
        Ok(())
    }

    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.admin)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    pub async fn login(&self, phone: &str, password: &str) -> anyhow::Result<String> {
        for attempt in 0..20u64 {
            let r = self
                .http
                .post(self.url("/api/v1/sessions"))
                .json(&json!({"phone": phone, "password": password}))
                .send()
                .await?;
            let status = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if status.as_u16() == 201 {
                return v["token"].as_str().map(str::to_owned).context("token");
            }
            if status.as_u16() != 429 && status.as_u16() != 503 {
                bail!("login of {phone}: {status} {v}");
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
        bail!(
            "login of {phone} kept being refused (429/503): a drill logs every buyer in from one \
             address; raise SECKILL_LOGIN_ATTEMPTS_PER_IP_PER_MINUTE on the deployment (0: no limit)"
        )
    }

    /// A request's status and JSON body (`Null` when the body is not JSON:
    /// a proxy's own error page keeps its status), or why there was no
    /// answer.
    async fn call(&self, req: reqwest::RequestBuilder) -> (Result<(u16, Value), Failure>, f64) {
        let started = Instant::now();
        let failure = |e: reqwest::Error| {
            if e.is_timeout() {
                Failure::Timeout
            } else {
                Failure::Connection
            }
        };
        let res = match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.bytes().await {
                    Ok(body) => Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null))),
                    Err(e) => Err(failure(e)),
                }
            }
            Err(e) => Err(failure(e)),
        };
        (res, started.elapsed().as_secs_f64() * 1000.0)
    }

    fn outcome(res: Result<(u16, Value), Failure>, ok: impl FnOnce(&Value) -> Outcome) -> Outcome {
        match res {
            Ok((201, v)) => ok(&v),
            Ok((status, v)) => Outcome::Refused(
                status,
                v["code"].as_str().unwrap_or("(no JSON code)").to_owned(),
            ),
            Err(e) => Outcome::Failed(e),
        }
    }

    pub async fn token(&self, session: &str, promo: i64, item: i64) -> (Outcome, f64) {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/promos/{promo}/tokens")))
            .bearer_auth(session)
            .json(&json!({"item_id": item}));
        let (res, ms) = self.call(req).await;
        (
            Self::outcome(res, |v| {
                Outcome::Token(v["token"].as_str().unwrap_or_default().to_owned())
            }),
            ms,
        )
    }

    pub async fn order(&self, session: &str, promo: i64, item: i64, token: &str) -> (Outcome, f64) {
        let req = self
            .http
            .post(self.url("/api/v1/orders"))
            .bearer_auth(session)
            .json(&json!({"promo_id": promo, "item_id": item, "amount": 1, "token": token}));
        let (res, ms) = self.call(req).await;
        (
            Self::outcome(res, |v| {
                Outcome::Created(v["order_no"].as_str().unwrap_or_default().to_owned())
            }),
            ms,
        )
    }

    /// Whether the buyer finds the order: 200 yes, 404 no; a busy answer
    /// (429, 5xx, no connection) is asked again, as a client would.
    pub async fn order_exists(&self, session: &str, no: &str) -> anyhow::Result<bool> {
        let mut last = String::new();
        for attempt in 0..20u64 {
            match self
                .http
                .get(self.url(&format!("/api/v1/orders/{no}")))
                .bearer_auth(session)
                .send()
                .await
            {
                Ok(r) if r.status().as_u16() == 200 => return Ok(true),
                Ok(r) if r.status().as_u16() == 404 => return Ok(false),
                Ok(r) => last = r.status().to_string(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50 * (attempt + 1))).await;
        }
        anyhow::bail!("order {no} could not be looked up: {last}")
    }
}
