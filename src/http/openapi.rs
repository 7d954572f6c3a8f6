//! The OpenAPI document, generated from the handlers' annotations and
//! served at `/api/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, health, items, orders, users};

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("the session token (or the seckill_session cookie)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("SECKILL_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "seckill", description = "Flash-sale API: see API.md for the stable contract."),
    paths(
        users::send_otp, users::register, users::login, users::logout, users::me,
        items::list, items::detail, items::promo,
        orders::captcha, orders::issue_token, orders::place, orders::list, orders::detail, orders::pay, orders::cancel,
        admin::create_users, admin::create_item, admin::update_item, admin::create_promo, admin::list_promos,
        admin::publish, admin::end_promo, admin::stats, admin::instances,
        health::healthz, health::readyz, health::metrics, health::time, health::client_config,
    ),
    modifiers(&Security),
)]
pub struct ApiDoc;
