//! Shared test support: a whole app on embedded adapters with a fresh
//! SQLite file, and one helper per endpoint.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use chrono::{Duration, Utc};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use seckill::app::App;
use seckill::config::{Config, Secret};

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct TestApp {
    pub app: App,
    pub router: Router,
    dir: std::sync::Arc<tempfile::TempDir>,
}

/// A response: status, headers and JSON (or raw) body.
pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// The embedded test config: fresh SQLite, admin token, captcha off, quick
/// check-backs.
pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        database_url: format!("sqlite://{}/seckill.db", dir.display()),
        admin_token: Some(Secret(ADMIN.into())),
        captcha_enabled: false,
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        node_id: Some(1),
        tx_check_after_ms: 100,
        tx_check_interval_ms: 50,
        ..Config::default()
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::spawn_in(dir, tweak).await
    }

    async fn spawn_in(
        dir: std::sync::Arc<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestApp {
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let app = seckill::app::build(config).await.expect("app builds");
        let router = seckill::http::router(app.state.clone());
        TestApp { app, router, dir }
    }

    /// A second process on the same database (an embedded restart: the
    /// in-memory ledger, sessions and tokens start empty).
    pub async fn restarted(&self, tweak: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_in(self.dir.clone(), tweak).await
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("router answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Resp {
            status,
            headers,
            bytes,
        }
    }

    pub async fn get(&self, uri: &str, auth: Option<&str>) -> Resp {
        self.call("GET", uri, auth, None).await
    }

    pub async fn post(&self, uri: &str, auth: Option<&str>, body: Value) -> Resp {
        self.call("POST", uri, auth, Some(body)).await
    }

    /// Registers through OTP and logs in; returns the session token.
    pub async fn user(&self, phone: &str) -> String {
        let r = self
            .post("/api/v1/otp", None, json!({"phone": phone}))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.json());
        let otp = self.app.otp.last_code(phone).expect("code sent");
        let r = self
            .post(
                "/api/v1/users",
                None,
                json!({"phone": phone, "otp": otp, "name": "Buyer", "password": "secret-pass"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        self.login(phone).await
    }

    pub async fn login(&self, phone: &str) -> String {
        let r = self
            .post(
                "/api/v1/sessions",
                None,
                json!({"phone": phone, "password": "secret-pass"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    /// Creates `n` users in bulk and logs each in.
    pub async fn users(&self, prefix: &str, n: usize) -> Vec<String> {
        let users: Vec<Value> = (0..n)
            .map(|i| json!({"phone": format!("{prefix}{i:05}"), "name": format!("u{i}"), "password": "secret-pass"}))
            .collect();
        let r = self
            .post(
                "/api/v1/admin/users",
                Some(ADMIN),
                json!({ "users": users }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        let mut tokens = Vec::new();
        for i in 0..n {
            tokens.push(self.login(&format!("{prefix}{i:05}")).await);
        }
        tokens
    }

    pub async fn item(&self, stock: i64) -> i64 {
        let r = self
            .post(
                "/api/v1/admin/items",
                Some(ADMIN),
                json!({"title": "Phone", "price_cents": 10000, "stock": stock, "description": "d", "image_url": ""}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        r.json()["id"].as_i64().unwrap()
    }

    /// A promo from `start_in` to `end_in` seconds from now.
    pub async fn promo(&self, item: i64, start_in: i64, end_in: i64) -> i64 {
        let now = Utc::now();
        let r = self
            .post(
                "/api/v1/admin/promos",
                Some(ADMIN),
                json!({"item_id": item, "name": "Flash", "price_cents": 5000,
                       "start_at": (now + Duration::seconds(start_in)).to_rfc3339(),
                       "end_at": (now + Duration::seconds(end_in)).to_rfc3339()}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        r.json()["id"].as_i64().unwrap()
    }

    pub async fn publish(&self, promo: i64) {
        let r = self.try_publish(promo).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    }

    /// The admin's publish of `promo`, whatever it answers.
    pub async fn try_publish(&self, promo: i64) -> Resp {
        self.call(
            "POST",
            &format!("/api/v1/admin/promos/{promo}/publish"),
            Some(ADMIN),
            None,
        )
        .await
    }

    /// An item with `stock` units in a published promo that is on sale now.
    pub async fn sale(&self, stock: i64) -> (i64, i64) {
        let item = self.item(stock).await;
        let promo = self.promo(item, -1, 3600).await;
        self.publish(promo).await;
        (item, promo)
    }

    pub async fn token(&self, session: &str, promo: i64, item: i64) -> Resp {
        self.post(
            &format!("/api/v1/promos/{promo}/tokens"),
            Some(session),
            json!({"item_id": item}),
        )
        .await
    }

    /// A seckill token of `session`'s (its request must succeed).
    pub async fn token_of(&self, session: &str, promo: i64, item: i64) -> String {
        let r = self.token(session, promo, item).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    /// Asks a captcha image and reads its answer from the store, playing
    /// the human who reads the picture.
    pub async fn captcha_answer(&self, session: &str, promo: i64) -> String {
        let img = self
            .get(&format!("/api/v1/promos/{promo}/captcha"), Some(session))
            .await;
        assert_eq!(img.status, StatusCode::OK);
        let me = self.get("/api/v1/me", Some(session)).await.json()["id"]
            .as_i64()
            .unwrap();
        self.app
            .state
            .ports
            .kv
            .get(&format!("captcha:{promo}:{me}"))
            .await
            .unwrap()
            .expect("a captcha is pending")
    }

    /// Asks a seckill token with a captcha answer.
    pub async fn token_with_captcha(
        &self,
        session: &str,
        promo: i64,
        item: i64,
        answer: &str,
    ) -> Resp {
        self.post(
            &format!("/api/v1/promos/{promo}/tokens"),
            Some(session),
            json!({"item_id": item, "captcha": answer}),
        )
        .await
    }

    pub async fn order(&self, session: &str, promo: i64, item: i64, token: &str) -> Resp {
        self.post(
            "/api/v1/orders",
            Some(session),
            json!({"promo_id": promo, "item_id": item, "amount": 1, "token": token}),
        )
        .await
    }

    /// Token then order, as a buyer does.
    pub async fn buy(&self, session: &str, promo: i64, item: i64) -> Resp {
        let t = self.token(session, promo, item).await;
        if t.status != StatusCode::CREATED {
            return t;
        }
        let token = t.json()["token"].as_str().unwrap().to_owned();
        self.order(session, promo, item, &token).await
    }

    pub async fn stats(&self, promo: i64) -> Value {
        let r = self
            .get(&format!("/api/v1/admin/promos/{promo}/stats"), Some(ADMIN))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()
    }

    /// Waits until the consumer has caught up: DB stock = ledger stock and no
    /// `init` rows. Bounded; panics with the last stats when it never does.
    pub async fn settled(&self, promo: i64) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            last = self.stats(promo).await;
            if last["stock_db"] == last["stock_cache"] && last["stock_log"]["init"] == 0 {
                return last;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("never settled: {last}");
    }
}
