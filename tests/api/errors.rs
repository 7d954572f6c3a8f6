use axum::http::{header, Request, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn malformed_json_and_wrong_types_are_400_bad_request() {
    let t = TestApp::spawn().await;
    let s = t.user("13500000001").await;
    let raw = |body: &'static str| {
        Request::post("/api/v1/orders")
            .header(header::AUTHORIZATION, format!("Bearer {s}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    for body in [
        "{",
        "[]",
        r#"{"promo_id": "one", "item_id": 1, "amount": 1, "token": "t"}"#,
        r#"{"item_id": 1}"#,
    ] {
        let r = t.send(raw(body)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn json_bodies_are_read_by_content_type_and_errors_name_the_field() {
    let t = TestApp::spawn().await;
    let s = t.user("13500000004").await;
    let send = |content_type: Option<&'static str>, body: &'static str| {
        let mut r =
            Request::post("/api/v1/orders").header(header::AUTHORIZATION, format!("Bearer {s}"));
        if let Some(ct) = content_type {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        r.body(axum::body::Body::from(body)).unwrap()
    };
    let order = r#"{"promo_id": 424242, "item_id": 1, "amount": 1, "token": "t"}"#;
    // Read as JSON: the order reaches the service (an unknown promo, 404).
    for ct in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;charset=utf-8",
        "application/vnd.api+json",
    ] {
        let r = t.send(send(Some(ct), order)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{ct}: {:?}", r.json());
    }
    // Not JSON: 400 before the service.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/jsonx"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset"),
        Some("application/json;;"),
    ] {
        let r = t.send(send(ct, order)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            "{ct:?}"
        );
    }
    // A wrongly typed field: the message says which.
    let r = t
        .send(send(
            Some("application/json"),
            r#"{"promo_id": 1, "item_id": 1, "amount": 1, "token": 7}"#,
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["message"].as_str().unwrap().contains("token"),
        "{:?}",
        r.json()
    );
    // Trailing bytes after the object are malformed JSON too.
    let r = t
        .send(send(
            Some("application/json"),
            r#"{"promo_id": 1, "item_id": 1, "amount": 1, "token": "t"} x"#,
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn invalid_values_are_422_invalid_argument() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(5).await;
    let s = t.user("13500000002").await;
    for amount in [0, -1, 2, 1_000_000] {
        let r = t
            .post(
                "/api/v1/orders",
                Some(&s),
                json!({"promo_id": promo, "item_id": item, "amount": amount, "token": "x"}),
            )
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_ARGUMENT"),
            "{amount}"
        );
    }
    let r = t
        .post("/api/v1/otp", None, json!({"phone": "not-a-phone"}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = t
        .post(
            "/api/v1/admin/items",
            Some(ADMIN),
            json!({"title": "x", "price_cents": 0, "stock": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = t
        .post(
            "/api/v1/admin/items",
            Some(ADMIN),
            json!({"title": "x".repeat(201), "price_cents": 1, "stock": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A date past what the database holds is bad input, not a 503.
    let r = t
        .post(
            "/api/v1/admin/promos",
            Some(ADMIN),
            json!({"item_id": item, "name": "far", "price_cents": 1,
                   "start_at": "9999-12-31T18:00:00-05:00", "end_at": "9999-12-31T20:00:00-05:00"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_ARGUMENT"),
        "{:?}",
        r.json()
    );
}

#[tokio::test]
async fn an_order_without_its_seckill_token_is_403_invalid_token() {
    let t = TestApp::spawn().await;
    let s = t.user("13500000009").await;
    let (item, promo) = t.sale(5).await;
    for body in [
        json!({"promo_id": promo, "item_id": item, "amount": 1}),
        json!({"promo_id": promo, "item_id": item, "amount": 1, "token": null}),
        json!({"promo_id": promo, "item_id": item, "amount": 1, "token": ""}),
    ] {
        let r = t.post("/api/v1/orders", Some(&s), body.clone()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::FORBIDDEN, "INVALID_TOKEN"),
            "{body}"
        );
    }
    assert_eq!(t.stats(promo).await["sold"], 0);
}

#[tokio::test]
async fn a_method_an_endpoint_does_not_take_is_405_with_a_json_body() {
    let t = TestApp::spawn().await;
    for (method, uri) in [
        ("DELETE", "/api/v1/orders"),
        ("DELETE", "/api/v1/items/1"),
        ("PUT", "/healthz"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let r = t.send(req).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            "{method} {uri}"
        );
        assert!(r.headers.contains_key(header::ALLOW), "{method} {uri}");
    }
}

#[tokio::test]
async fn unknown_ids_are_404_and_unparsable_ids_400() {
    let t = TestApp::spawn().await;
    let s = t.user("13500000003").await;
    assert_eq!(
        t.get("/api/v1/items/424242", None).await.code(),
        "NOT_FOUND"
    );
    assert_eq!(
        t.get("/api/v1/items/abc", None).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        t.get("/api/v1/orders/nope", Some(&s)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(t.token(&s, 999, 1).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        t.get("/api/v1/no-such-endpoint", None).await.code(),
        "NOT_FOUND"
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let t = TestApp::spawn_with(|c| c.max_body_bytes = 1024).await;
    let r = t
        .post("/api/v1/otp", None, json!({"phone": "1".repeat(4096)}))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
}

#[tokio::test]
async fn the_admin_api_takes_larger_bodies_than_the_buying_requests() {
    let t = TestApp::spawn_with(|c| {
        c.max_body_bytes = 1024;
        c.admin_max_body_bytes = 64 * 1024;
    })
    .await;
    let (item, promo) = t.sale(1).await;
    let s = t.user("13500000090").await;
    let r = t
        .post(
            "/api/v1/orders",
            Some(&s),
            json!({"promo_id": promo, "item_id": item, "amount": 1, "token": "x".repeat(4096)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Over the buying requests' limit, within the admin API's.
    let r = t
        .call(
            "PATCH",
            &format!("/api/v1/admin/items/{item}"),
            Some(ADMIN),
            Some(json!({"description": "d".repeat(3_000)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let users: Vec<_> = (0..2_000)
        .map(|i| json!({"phone": format!("1390{i:07}"), "name": "n", "password": "secret-pass"}))
        .collect();
    let r = t
        .post(
            "/api/v1/admin/users",
            Some(ADMIN),
            json!({ "users": users }),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A promo's gate lost on its own, beside its ledger (a ledger rebuild that
/// failed between the two, a gate evicted): set again from the ledger's
/// stock by the next token request, rather than every buyer being told
/// "sold out" until the sale ends.
#[tokio::test]
async fn a_gate_lost_beside_its_ledger_is_set_again_from_the_ledgers_stock() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(3).await;
    let kv = &t.app.state.ports.kv;
    let gate = format!("gate:{promo}");
    kv.delete(&gate).await.unwrap();
    let s = t.user("13500000014").await;
    let r = t.token(&s, promo, item).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let factor = i64::from(t.app.state.config.gate_factor);
    assert_eq!(
        kv.get(&gate).await.unwrap(),
        Some((3 * factor - 1).to_string()),
        "stock × factor, less the permit just taken"
    );
    assert_eq!(t.buy(&s, promo, item).await.status, StatusCode::CREATED);
}

/// A pure-DB sale's ledger is never told of its sales: its lost gate is
/// set again from the DB's stock, not from the stock it was warmed with.
#[tokio::test]
async fn a_pure_db_sales_lost_gate_is_set_again_from_the_db_stock() {
    let t =
        TestApp::spawn_with(|c| c.order_strategy = seckill::config::OrderStrategy::DbLock).await;
    let (item, promo) = t.sale(3).await;
    let first = t.user("13500000015").await;
    assert_eq!(t.buy(&first, promo, item).await.status, StatusCode::CREATED);
    let kv = &t.app.state.ports.kv;
    let gate = format!("gate:{promo}");
    kv.delete(&gate).await.unwrap();
    let s = t.user("13500000016").await;
    let r = t.token(&s, promo, item).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let factor = i64::from(t.app.state.config.gate_factor);
    assert_eq!(
        kv.get(&gate).await.unwrap(),
        Some((2 * factor - 1).to_string()),
        "the two units left × factor, less the permit just taken"
    );
}

#[tokio::test]
async fn an_order_while_the_broker_is_down_is_503_and_gives_the_stock_back() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(1).await;
    let s = t.user("13500000004").await;
    let token = t.token(&s, promo, item).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let gate = || async {
        let kv = &t.app.state.ports.kv;
        let v = kv.get(&format!("gate:{promo}")).await.unwrap();
        v.unwrap().parse::<i64>().unwrap()
    };
    let permits = gate().await;
    t.app.memory_bus.as_ref().unwrap().refuse_sends(true);
    let r = t.order(&s, promo, item, &token).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
    let stats = t.stats(promo).await;
    assert_eq!(stats["stock_cache"], 1, "reservation given back");
    assert_eq!(
        gate().await,
        permits,
        "the buyer keeps the permit through the token given back: a retry \
         failing again adds no permits"
    );
    assert_eq!(stats["orders"], 0);
    assert_eq!(
        stats["stock_log"],
        json!({"init": 0, "committed": 0, "rolled_back": 1})
    );
    t.app.memory_bus.as_ref().unwrap().refuse_sends(false);
    assert_eq!(
        t.buy(&s, promo, item).await.status,
        StatusCode::CREATED,
        "the same buyer can buy once it is back"
    );
}
