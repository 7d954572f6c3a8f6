//! `serve --demo`: a few items and a published promo that starts a minute
//! after start-up, so a newcomer watches a sale open.

use chrono::{Duration, Utc};

use crate::domain::{NewItem, NewPromo, PromoState};
use crate::http::AppState;

const ITEMS: [(&str, i64, i64, &str); 3] = [
    (
        "Mechanical keyboard (demo flash sale)",
        39_900,
        20,
        "Hot-swappable, 87 keys. Twenty units at the flash price.",
    ),
    (
        "Noise-cancelling headphones",
        129_900,
        50,
        "Over-ear, 30 h battery.",
    ),
    (
        "USB-C charger 65 W",
        19_900,
        100,
        "Three ports, foldable plug.",
    ),
];

pub async fn seed(state: &AppState) -> anyhow::Result<()> {
    let catalog = &state.catalog;
    let page = state.config.item_list_page_max;
    let mut items = catalog.items(0, page).await?.0;
    if items.is_empty() {
        for (title, price, stock, description) in ITEMS {
            catalog
                .create_item(NewItem {
                    title: title.into(),
                    price_cents: price,
                    stock,
                    description: description.into(),
                    image_url: String::new(),
                })
                .await?;
        }
        items = catalog.items(0, page).await?.0;
    }
    let Some(target) = items
        .iter()
        .find(|v| v.item.title == ITEMS[0].0)
        .or(items.first())
    else {
        return Ok(());
    };
    let now = Utc::now();
    let live = target
        .promo
        .as_ref()
        .is_some_and(|p| p.state_at(now) != PromoState::Ended);
    if live || target.item.stock == 0 {
        tracing::info!(item_id = %target.item.id, "demo: a promo is already running or coming");
        return Ok(());
    }
    // An earlier demo sale may not be over for good (unpaid orders of it,
    // say, in a data file kept across starts): no new sale then, and the
    // server starts anyway.
    if let Err(e) = catalog
        .ensure_item_free_for_a_sale(target.item.id, None)
        .await
    {
        tracing::warn!(item_id = %target.item.id, error = %e, "demo: no new flash sale yet");
        return Ok(());
    }
    let promo = catalog
        .create_promo(NewPromo {
            item_id: target.item.id,
            name: "Demo flash sale".into(),
            price_cents: (target.item.price_cents / 2).max(1),
            start_at: now + Duration::seconds(60),
            end_at: now + Duration::minutes(30),
        })
        .await?;
    catalog.publish(promo.id).await?;
    tracing::info!(promo_id = %promo.id, item_id = %target.item.id, start_at = %promo.start_at,
        "demo: flash sale published; it opens in one minute");
    Ok(())
}
