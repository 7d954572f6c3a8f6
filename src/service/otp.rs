//! The one-time-code sender port: the `dev` sender that logs codes (the
//! embedded default), and the webhook sender that hands each code to the
//! operator's SMS gateway over HTTP (`SECKILL_OTP_WEBHOOK_URL`).

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

/// Delivers a one-time code to a phone (SMS in production).
#[async_trait]
pub trait OtpSender: Send + Sync {
    async fn send(&self, phone: &str, code: &str) -> anyhow::Result<()>;
}

/// The development sender: logs the code, and keeps the last few so that
/// local tools and tests can read them (never enable in production).
#[derive(Default)]
pub struct DevOtpSender {
    recent: Mutex<VecDeque<(String, String)>>,
}

const KEEP: usize = 1024;

impl DevOtpSender {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code sent to `phone`, if any.
    pub fn last_code(&self, phone: &str) -> Option<String> {
        self.recent
            .lock()
            .iter()
            .rev()
            .find(|(p, _)| p == phone)
            .map(|(_, c)| c.clone())
    }
}

#[async_trait]
impl OtpSender for DevOtpSender {
    async fn send(&self, phone: &str, code: &str) -> anyhow::Result<()> {
        tracing::info!(phone, code, "one-time code (dev sender: not sent anywhere)");
        let mut r = self.recent.lock();
        if r.len() == KEEP {
            r.pop_front();
        }
        r.push_back((phone.to_owned(), code.to_owned()));
        Ok(())
    }
}

/// Hands each code to an HTTP endpoint (the operator's SMS gateway or a
/// relay to it): `POST {url}` with `{"phone", "code"}` as JSON and, when
/// configured, `Authorization: Bearer {token}`. Any 2xx answer is
/// delivered; anything else (another status, no answer within the time-out)
/// is an error, and the caller answers 503 — the code is not sent, and the
/// user asks again.
pub struct WebhookOtpSender {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl WebhookOtpSender {
    pub fn new(url: &str, token: Option<&str>, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(WebhookOtpSender {
            http,
            url: url.to_owned(),
            token: token.map(str::to_owned),
        })
    }
}

#[async_trait]
impl OtpSender for WebhookOtpSender {
    async fn send(&self, phone: &str, code: &str) -> anyhow::Result<()> {
        let mut req = self
            .http
            .post(&self.url)
            .json(&serde_json::json!({ "phone": phone, "code": code }));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        // The error names the gateway, never the code.
        let status = req
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "the one-time-code webhook did not answer: {}",
                    e.without_url()
                )
            })?
            .status();
        if !status.is_success() {
            anyhow::bail!("the one-time-code webhook answered {status}");
        }
        Ok(())
    }
}
