-- The checks the SQLite schema has had from the start: a non-positive
-- amount would turn `stock - n ... WHERE stock >= n` into an increase.
ALTER TABLE stock_log ADD CONSTRAINT ck_stock_log_amount CHECK (amount > 0);
ALTER TABLE order_info ADD CONSTRAINT ck_order_amount CHECK (amount > 0);
ALTER TABLE stock_deduction
    ADD CONSTRAINT ck_deduction_outcome CHECK (outcome IN ('applied', 'insufficient'));

-- The item list reads `ORDER BY sales DESC, id`: an index in that order
-- (MySQL 8 and MariaDB 10.8 keep descending keys) serves its pages
-- without sorting the table.
DROP INDEX idx_item_sales ON item;
CREATE INDEX idx_item_sales ON item (sales DESC, id);

-- The reconciler looks for committed rows never deducted among those
-- written since its last look, not among every row of every sale so far.
CREATE INDEX idx_stock_log_settled ON stock_log (status, updated_at);
