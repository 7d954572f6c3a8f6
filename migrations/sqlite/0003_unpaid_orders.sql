-- The payment time-out's sweep finds unpaid orders by age.
CREATE INDEX idx_order_status_created ON order_info (status, created_at);
