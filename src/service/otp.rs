//! The one-time-code sender port, and the `dev` sender that logs codes.

use std::collections::VecDeque;

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
