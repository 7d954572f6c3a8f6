-- seckill schema, SQLite flavour. Times are RFC 3339 text in UTC; money is
-- integer cents.

CREATE TABLE user (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    phone         TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    gender        TEXT,
    age           INTEGER,
    password_hash TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    CONSTRAINT uk_user_phone UNIQUE (phone)
);

CREATE TABLE item (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    title       TEXT    NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents > 0),
    description TEXT    NOT NULL DEFAULT '',
    image_url   TEXT    NOT NULL DEFAULT '',
    sales       INTEGER NOT NULL DEFAULT 0 CHECK (sales >= 0),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
CREATE INDEX idx_item_sales ON item (sales DESC, id);

CREATE TABLE item_stock (
    item_id INTEGER PRIMARY KEY REFERENCES item (id),
    stock   INTEGER NOT NULL CHECK (stock >= 0),
    version INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE promo (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id      INTEGER NOT NULL REFERENCES item (id),
    name         TEXT    NOT NULL,
    price_cents  INTEGER NOT NULL CHECK (price_cents > 0),
    start_at     TEXT    NOT NULL,
    end_at       TEXT    NOT NULL,
    published    INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT    NOT NULL
);
CREATE INDEX idx_promo_item ON promo (item_id, start_at);

-- One row per reservation; its id is also the order's Snowflake id.
CREATE TABLE stock_log (
    id         INTEGER PRIMARY KEY,
    item_id    INTEGER NOT NULL,
    promo_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount > 0),
    status     TEXT    NOT NULL CHECK (status IN ('init', 'committed', 'rolled_back')),
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
CREATE INDEX idx_stock_log_status ON stock_log (status, created_at);
CREATE INDEX idx_stock_log_promo ON stock_log (promo_id, status);

CREATE TABLE order_info (
    order_no         TEXT    PRIMARY KEY,
    stock_log_id     INTEGER NOT NULL,
    user_id          INTEGER NOT NULL,
    item_id          INTEGER NOT NULL,
    promo_id         INTEGER NOT NULL,
    amount           INTEGER NOT NULL CHECK (amount > 0),
    unit_price_cents INTEGER NOT NULL,
    total_cents      INTEGER NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('pending_payment', 'paid', 'cancelled')),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    CONSTRAINT uk_order_stock_log UNIQUE (stock_log_id),
    -- one order per user per promo, whatever the cache believes
    CONSTRAINT uk_order_user_promo UNIQUE (user_id, promo_id)
);
CREATE INDEX idx_order_user ON order_info (user_id, created_at);
CREATE INDEX idx_order_promo ON order_info (promo_id, status);

-- The consumer's idempotency: a stock_log id is deducted at most once.
CREATE TABLE stock_deduction (
    stock_log_id INTEGER PRIMARY KEY,
    item_id      INTEGER NOT NULL,
    amount       INTEGER NOT NULL,
    outcome      TEXT    NOT NULL CHECK (outcome IN ('applied', 'insufficient')),
    applied_at   TEXT    NOT NULL
);
