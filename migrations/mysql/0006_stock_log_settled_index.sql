-- The reconciler looks for committed rows never deducted among those
-- written since its last look, not among every row of every sale so far.
-- (InnoDB adds an index in place, writes going on.)
CREATE INDEX idx_stock_log_settled ON stock_log (status, updated_at);
