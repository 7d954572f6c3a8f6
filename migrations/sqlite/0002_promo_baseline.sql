-- What the ledger was warmed with when the promo was published: the item's
-- stock and sales at that instant. Live figures are derived from it and the
-- ledger's stock (sales = warm_sales + warm_stock - ledger stock), so a
-- cached item row never shows stale stock or sales during a sale.
ALTER TABLE promo ADD COLUMN warm_stock INTEGER;
ALTER TABLE promo ADD COLUMN warm_sales INTEGER;
