//! The check-back: the broker asks about a half message whose local
//! transaction's outcome it never learnt; the answer is in `stock_log`.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{StockLogId, StockLogStatus};
use crate::mq::{Event, TxChecker, TxState};
use crate::store::Store;

pub struct StockLogChecker {
    store: Arc<dyn Store>,
}

impl StockLogChecker {
    pub fn new(store: Arc<dyn Store>) -> Self {
        StockLogChecker { store }
    }
}

/// The answer for a message given its rows' statuses: any row still `init`
/// → unknown (ask again later); else commit when any row committed (the
/// consumer deducts only committed rows, once each); else rollback.
pub fn decide(statuses: &[(StockLogId, StockLogStatus)]) -> TxState {
    if statuses.iter().any(|(_, s)| *s == StockLogStatus::Init) {
        TxState::Unknown
    } else if statuses
        .iter()
        .any(|(_, s)| *s == StockLogStatus::Committed)
    {
        TxState::Commit
    } else {
        TxState::Rollback
    }
}

#[async_trait]
impl TxChecker for StockLogChecker {
    async fn check(&self, event: &Event) -> TxState {
        let Event::StockDeduct { entries, .. } = event else {
            // Only stock deductions are sent in transactions.
            return TxState::Rollback;
        };
        let ids: Vec<StockLogId> = entries.iter().map(|e| e.stock_log_id).collect();
        match self.store.stock_log_statuses(&ids).await {
            Ok(statuses) => decide(&statuses),
            Err(e) => {
                tracing::warn!(error = %e, "check-back could not read stock_log; answering unknown");
                TxState::Unknown
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StockLogStatus::*;

    #[test]
    fn check_back_answers_from_the_journal() {
        let id = StockLogId;
        assert_eq!(decide(&[(id(1), Init)]), TxState::Unknown);
        assert_eq!(
            decide(&[(id(1), Committed), (id(2), Committed)]),
            TxState::Commit
        );
        assert_eq!(decide(&[(id(1), RolledBack)]), TxState::Rollback);
        assert_eq!(decide(&[]), TxState::Rollback);
        assert_eq!(
            decide(&[(id(1), Committed), (id(2), Init)]),
            TxState::Unknown
        );
    }
}
