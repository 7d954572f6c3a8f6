-- The order strategy a promo was published under (write-behind, db-lock,
-- db-optimistic). A sale stays with the place it takes stock from: an
-- instance whose strategy keeps stock elsewhere (the ledger against the DB
-- alone) refuses to sell it rather than sell its units twice. NULL: a promo
-- published before this column (held to the instance's strategy).
ALTER TABLE promo ADD COLUMN strategy VARCHAR(16) NULL;
