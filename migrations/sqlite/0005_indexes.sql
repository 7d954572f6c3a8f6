-- A promo's cancelled orders are paged by order number (`order_no > ?
-- ORDER BY order_no`). In MySQL the (promo_id, status) index carries the
-- primary key, so pages come in order; here the text primary key is not
-- the row id, so the index names it itself, or every page sorts them all.
CREATE INDEX idx_order_promo_no ON order_info (promo_id, status, order_no);
DROP INDEX idx_order_promo;

-- The reconciler looks for committed rows never deducted among those
-- written since its last look, not among every row of every sale so far.
CREATE INDEX idx_stock_log_settled ON stock_log (status, updated_at);
