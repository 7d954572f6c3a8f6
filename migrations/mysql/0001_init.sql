-- seckill schema, MySQL 8 / MariaDB 10.11 flavour. Times are UTC DATETIME(6);
-- money is integer cents.

CREATE TABLE user (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    phone         VARCHAR(16)  NOT NULL,
    name          VARCHAR(64)  NOT NULL,
    gender        VARCHAR(8)   NULL,
    age           INT          NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at    DATETIME(6)  NOT NULL,
    CONSTRAINT uk_user_phone UNIQUE (phone)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE item (
    id          BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    title       VARCHAR(200)  NOT NULL,
    price_cents BIGINT        NOT NULL,
    description VARCHAR(4000) NOT NULL DEFAULT '',
    image_url   VARCHAR(1024) NOT NULL DEFAULT '',
    sales       BIGINT        NOT NULL DEFAULT 0,
    created_at  DATETIME(6)   NOT NULL,
    updated_at  DATETIME(6)   NOT NULL,
    INDEX idx_item_sales (sales, id),
    CONSTRAINT ck_item_price CHECK (price_cents > 0),
    CONSTRAINT ck_item_sales CHECK (sales >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE item_stock (
    item_id BIGINT NOT NULL PRIMARY KEY,
    stock   BIGINT NOT NULL,
    version BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT ck_item_stock CHECK (stock >= 0),
    CONSTRAINT fk_item_stock_item FOREIGN KEY (item_id) REFERENCES item (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE promo (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    item_id     BIGINT       NOT NULL,
    name        VARCHAR(100) NOT NULL,
    price_cents BIGINT       NOT NULL,
    start_at    DATETIME(6)  NOT NULL,
    end_at      DATETIME(6)  NOT NULL,
    published   TINYINT      NOT NULL DEFAULT 0,
    created_at  DATETIME(6)  NOT NULL,
    INDEX idx_promo_item (item_id, start_at),
    CONSTRAINT fk_promo_item FOREIGN KEY (item_id) REFERENCES item (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per reservation; its id is also the order's Snowflake id.
CREATE TABLE stock_log (
    id         BIGINT      NOT NULL PRIMARY KEY,
    item_id    BIGINT      NOT NULL,
    promo_id   BIGINT      NOT NULL,
    user_id    BIGINT      NOT NULL,
    amount     BIGINT      NOT NULL,
    status     VARCHAR(16) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    INDEX idx_stock_log_status (status, created_at),
    INDEX idx_stock_log_promo (promo_id, status),
    CONSTRAINT ck_stock_log_status CHECK (status IN ('init', 'committed', 'rolled_back'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE order_info (
    order_no         VARCHAR(32) NOT NULL PRIMARY KEY,
    stock_log_id     BIGINT      NOT NULL,
    user_id          BIGINT      NOT NULL,
    item_id          BIGINT      NOT NULL,
    promo_id         BIGINT      NOT NULL,
    amount           BIGINT      NOT NULL,
    unit_price_cents BIGINT      NOT NULL,
    total_cents      BIGINT      NOT NULL,
    status           VARCHAR(16) NOT NULL,
    created_at       DATETIME(6) NOT NULL,
    updated_at       DATETIME(6) NOT NULL,
    CONSTRAINT uk_order_stock_log UNIQUE (stock_log_id),
    -- one order per user per promo, whatever the cache believes
    CONSTRAINT uk_order_user_promo UNIQUE (user_id, promo_id),
    INDEX idx_order_user (user_id, created_at),
    INDEX idx_order_promo (promo_id, status),
    CONSTRAINT ck_order_status CHECK (status IN ('pending_payment', 'paid', 'cancelled'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The consumer's idempotency: a stock_log id is deducted at most once.
CREATE TABLE stock_deduction (
    stock_log_id BIGINT      NOT NULL PRIMARY KEY,
    item_id      BIGINT      NOT NULL,
    amount       BIGINT      NOT NULL,
    outcome      VARCHAR(16) NOT NULL,
    applied_at   DATETIME(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
