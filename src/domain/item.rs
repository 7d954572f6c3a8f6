//! Items: what is sold, at what normal price, with how much stock.

use chrono::{DateTime, Utc};

use super::{bounded_text, Invalid, ItemId};

/// Highest price accepted, in cents (10 million yuan).
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;
/// Highest stock accepted for one item.
pub const MAX_STOCK: i64 = 100_000_000;

/// A stored item with its DB stock (`item_stock`) and sales.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: ItemId,
    pub title: String,
    pub price_cents: i64,
    pub stock: i64,
    pub sales: i64,
    pub description: String,
    pub image_url: String,
    pub updated_at: DateTime<Utc>,
}

/// An item to create.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub title: String,
    pub price_cents: i64,
    pub stock: i64,
    pub description: String,
    pub image_url: String,
}

/// A partial update of an item's descriptive fields (stock is never patched:
/// it moves only through orders).
#[derive(Debug, Clone, Default)]
pub struct ItemPatch {
    pub title: Option<String>,
    pub price_cents: Option<i64>,
    pub description: Option<String>,
    pub image_url: Option<String>,
}

fn check_price(price_cents: i64) -> Result<(), Invalid> {
    if !(1..=MAX_PRICE_CENTS).contains(&price_cents) {
        return Err(Invalid(format!(
            "price_cents must be between 1 and {MAX_PRICE_CENTS}"
        )));
    }
    Ok(())
}

/// Empty, a path of this site (`/img/a.png`), or an absolute http(s) URL
/// with a host that parses as one (`http://[` does not): pages and clients
/// put it in an `img` tag as it is.
fn check_image_url(url: &str) -> Result<(), Invalid> {
    bounded_text("image_url", url, 0, 1024)?;
    // No backslash: browsers read it as a slash (`/\evil.example/x.png`
    // would load from another host).
    let plain = !url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
    let site_path = url.starts_with('/') && !url.starts_with("//");
    // The scheme as the OpenAPI pattern spells it (lower case).
    let web = || {
        (url.starts_with("http://") || url.starts_with("https://"))
            && ::url::Url::parse(url).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()))
    };
    let allowed = url.is_empty() || (plain && (site_path || web()));
    if !allowed {
        return Err(Invalid::new(
            "image_url must be empty, an http(s) URL or a path starting with /",
        ));
    }
    Ok(())
}

impl NewItem {
    pub fn validate(&self) -> Result<(), Invalid> {
        bounded_text("title", self.title.trim(), 1, 200)?;
        check_price(self.price_cents)?;
        if !(0..=MAX_STOCK).contains(&self.stock) {
            return Err(Invalid(format!("stock must be between 0 and {MAX_STOCK}")));
        }
        bounded_text("description", &self.description, 0, 4000)?;
        check_image_url(&self.image_url)
    }
}

impl ItemPatch {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(t) = &self.title {
            bounded_text("title", t.trim(), 1, 200)?;
        }
        if let Some(p) = self.price_cents {
            check_price(p)?;
        }
        if let Some(d) = &self.description {
            bounded_text("description", d, 0, 4000)?;
        }
        if let Some(u) = &self.image_url {
            check_image_url(u)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.price_cents.is_none()
            && self.description.is_none()
            && self.image_url.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> NewItem {
        NewItem {
            title: "Phone".into(),
            price_cents: 100,
            stock: 10,
            description: String::new(),
            image_url: String::new(),
        }
    }

    #[test]
    fn a_plain_item_is_valid() {
        assert!(item().validate().is_ok());
    }

    #[test]
    fn zero_or_negative_prices_and_stock_are_refused() {
        assert!(NewItem {
            price_cents: 0,
            ..item()
        }
        .validate()
        .is_err());
        assert!(NewItem {
            stock: -1,
            ..item()
        }
        .validate()
        .is_err());
        assert!(NewItem {
            title: " ".into(),
            ..item()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn image_urls_must_be_web_addresses() {
        assert!(NewItem {
            image_url: "javascript:alert(1)".into(),
            ..item()
        }
        .validate()
        .is_err());
        for bad in [
            "javascript:alert(1)",
            "http://[",
            "http://[::1",
            "https://",
            "//evil.example/x.png",
            "/\\evil.example/x.png",
            "http:/\\evil.example/x.png",
            "/img/a b.png",
            "http://shop.example/a\nb.png",
            "ftp://shop.example/a.png",
            "HTTP://SHOP.EXAMPLE/A.PNG",
        ] {
            assert!(
                NewItem {
                    image_url: bad.into(),
                    ..item()
                }
                .validate()
                .is_err(),
                "{bad:?}"
            );
        }
        for good in [
            "",
            "/img/a.png",
            "https://cdn.example/a.png?v=1",
            "http://[::1]:8080/a.png",
        ] {
            assert!(
                NewItem {
                    image_url: good.into(),
                    ..item()
                }
                .validate()
                .is_ok(),
                "{good:?}"
            );
        }
    }
}
