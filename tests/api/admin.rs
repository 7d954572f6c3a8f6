use axum::http::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn admin_endpoints_refuse_users_strangers_and_a_missing_token() {
    let t = TestApp::spawn().await;
    let user = t.user("13900000001").await;
    let body = json!({"title": "x", "price_cents": 1, "stock": 1});
    let r = t
        .post("/api/v1/admin/items", Some(&user), body.clone())
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    let r = t.post("/api/v1/admin/items", None, body.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let closed = TestApp::spawn_with(|c| c.admin_token = None).await;
    let r = closed.post("/api/v1/admin/items", Some(ADMIN), body).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
}

#[tokio::test]
async fn items_are_listed_by_sales_with_their_promo() {
    let t = TestApp::spawn().await;
    let quiet = t.item(10).await;
    let (hot, promo) = t.sale(10).await;
    let buyer = t.user("13900000002").await;
    assert_eq!(t.buy(&buyer, promo, hot).await.status, StatusCode::CREATED);
    let items = t.get("/api/v1/items", None).await.json();
    let ids: Vec<i64> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![hot, quiet]);
    let first = &items["items"][0];
    assert_eq!(first["sales"], 1);
    assert_eq!(first["stock"], 9, "live stock from the ledger");
    assert_eq!(first["promo"]["status"], "ongoing");
    assert_eq!(first["promo"]["published"], true);
}

#[tokio::test]
async fn the_item_list_comes_a_page_at_a_time() {
    let t = TestApp::spawn_with(|c| c.item_list_page_max = 2).await;
    let mut made = [t.item(1).await, t.item(1).await, t.item(1).await];
    made.sort();
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect()
    };
    // No sales: ties by id. The default page is the largest.
    let first = t.get("/api/v1/items", None).await.json();
    assert_eq!(ids(&first), made[..2].to_vec());
    assert_eq!(first["next_offset"], 2);
    let last = t.get("/api/v1/items?offset=2", None).await.json();
    assert_eq!(ids(&last), made[2..].to_vec());
    assert!(last.get("next_offset").is_none(), "the last page: {last}");
    let one = t.get("/api/v1/items?limit=1&offset=1", None).await.json();
    assert_eq!((ids(&one), &one["next_offset"]), (vec![made[1]], &2.into()));

    // A limit above the largest page is taken as the largest page.
    let capped = t.get("/api/v1/items?limit=3", None).await.json();
    assert_eq!(
        (ids(&capped), &capped["next_offset"]),
        (made[..2].to_vec(), &2.into())
    );

    for (query, status) in [
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("offset=-1", StatusCode::UNPROCESSABLE_ENTITY),
        ("offset=2147483648", StatusCode::BAD_REQUEST),
        ("limit=3000000000", StatusCode::BAD_REQUEST),
        ("limit=many", StatusCode::BAD_REQUEST),
    ] {
        let r = t.get(&format!("/api/v1/items?{query}"), None).await;
        assert_eq!(r.status, status, "{query}: {:?}", r.json());
        assert!(!r.json()["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_promo_list_comes_newest_first_a_page_at_a_time() {
    let t = TestApp::spawn_with(|c| c.item_list_page_max = 2).await;
    let mut made = Vec::new();
    for _ in 0..3 {
        let item = t.item(1).await;
        made.push(t.promo(item, 60, 3600).await);
    }
    made.sort();
    made.reverse();
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v["promos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect()
    };
    let first = t.get("/api/v1/admin/promos", Some(ADMIN)).await.json();
    assert_eq!(ids(&first), made[..2].to_vec());
    assert_eq!(first["next_before"], made[1]);
    let uri = format!("/api/v1/admin/promos?before={}", made[1]);
    let last = t.get(&uri, Some(ADMIN)).await.json();
    assert_eq!(ids(&last), made[2..].to_vec());
    assert!(last.get("next_before").is_none(), "the last page: {last}");
    let one = t
        .get("/api/v1/admin/promos?limit=1", Some(ADMIN))
        .await
        .json();
    assert_eq!(
        (ids(&one), &one["next_before"]),
        (vec![made[0]], &made[0].into())
    );
    let capped = t
        .get("/api/v1/admin/promos?limit=9", Some(ADMIN))
        .await
        .json();
    assert_eq!(ids(&capped), made[..2].to_vec());
    for (query, status) in [
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("before=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("limit=many", StatusCode::BAD_REQUEST),
    ] {
        let r = t
            .get(&format!("/api/v1/admin/promos?{query}"), Some(ADMIN))
            .await;
        assert_eq!(r.status, status, "{query}: {:?}", r.json());
    }
}

#[tokio::test]
async fn an_admin_write_naming_a_field_it_does_not_have_is_refused() {
    let t = TestApp::spawn().await;
    let item = t.item(5).await;
    // Stock moves only through orders: a patch that tries is told so, not
    // answered 200 with the stock unchanged.
    for body in [json!({"title": "x", "stock": 0}), json!({"price": 100})] {
        let r = t
            .call(
                "PATCH",
                &format!("/api/v1/admin/items/{item}"),
                Some(ADMIN),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            "{body}: {:?}",
            r.json()
        );
        assert!(r.json()["message"]
            .as_str()
            .unwrap()
            .contains("unknown field"));
    }
    let r = t
        .post(
            "/api/v1/admin/items",
            Some(ADMIN),
            json!({"title": "x", "price_cents": 1, "stock": 1, "imageUrl": "/a.png"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.json());
    let view = t.get(&format!("/api/v1/items/{item}"), None).await.json();
    assert_eq!(
        (&view["title"], &view["stock"]),
        (&"Phone".into(), &5.into())
    );
}

#[tokio::test]
async fn an_items_price_may_not_go_below_a_promo_not_over() {
    let t = TestApp::spawn().await;
    let item = t.item(5).await; // 10,000 cents; its promo sells at 5,000
    t.promo(item, 60, 3600).await;
    let t = &t;
    let patch = |cents: i64| {
        let uri = format!("/api/v1/admin/items/{item}");
        async move {
            t.call(
                "PATCH",
                &uri,
                Some(ADMIN),
                Some(json!({ "price_cents": cents })),
            )
            .await
        }
    };
    let r = patch(4_999).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_ARGUMENT"),
        "{:?}",
        r.json()
    );
    assert_eq!(
        t.get(&format!("/api/v1/items/{item}"), None).await.json()["price_cents"],
        10_000
    );
    assert_eq!(patch(5_000).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_overlapping_promos_created_at_once_one_is_refused() {
    let t = TestApp::spawn().await;
    for _ in 0..5 {
        let item = t.item(5).await;
        let now = chrono::Utc::now();
        let at = |s: i64| (now + chrono::Duration::seconds(s)).to_rfc3339();
        let body = json!({"item_id": item, "name": "twin", "price_cents": 10,
                          "start_at": at(60), "end_at": at(600)});
        let (a, b) = tokio::join!(
            t.post("/api/v1/admin/promos", Some(ADMIN), body.clone()),
            t.post("/api/v1/admin/promos", Some(ADMIN), body.clone()),
        );
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "{:?} {:?}",
            a.json(),
            b.json()
        );
    }
}

#[tokio::test]
async fn patching_an_item_changes_what_buyers_see() {
    let t = TestApp::spawn().await;
    let item = t.item(5).await;
    let r = t
        .call(
            "PATCH",
            &format!("/api/v1/admin/items/{item}"),
            Some(ADMIN),
            Some(json!({"price_cents": 777})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        t.get(&format!("/api/v1/items/{item}"), None).await.json()["price_cents"],
        777
    );
    let r = t
        .call(
            "PATCH",
            &format!("/api/v1/admin/items/{item}"),
            Some(ADMIN),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = t
        .call(
            "PATCH",
            "/api/v1/admin/items/999",
            Some(ADMIN),
            Some(json!({"title": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn promos_must_be_valid_and_must_not_overlap() {
    let t = TestApp::spawn().await;
    let item = t.item(5).await;
    t.promo(item, 10, 100).await;
    let now = chrono::Utc::now();
    let at = |s: i64| (now + chrono::Duration::seconds(s)).to_rfc3339();
    let r = t
        .post("/api/v1/admin/promos", Some(ADMIN),
            json!({"item_id": item, "name": "b", "price_cents": 10, "start_at": at(50), "end_at": at(200)}))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "CONFLICT")
    );
    let r = t
        .post("/api/v1/admin/promos", Some(ADMIN),
            json!({"item_id": item, "name": "b", "price_cents": 10, "start_at": at(300), "end_at": at(200)}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = t
        .post("/api/v1/admin/promos", Some(ADMIN),
            json!({"item_id": 999, "name": "b", "price_cents": 10, "start_at": at(300), "end_at": at(400)}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bulk_users_are_created_and_duplicates_skipped() {
    let t = TestApp::spawn().await;
    let users = |n: usize| -> Vec<serde_json::Value> {
        (0..n).map(|i| json!({"phone": format!("1370000{i:04}"), "name": "u", "password": "secret-pass"})).collect()
    };
    let r = t
        .post(
            "/api/v1/admin/users",
            Some(ADMIN),
            json!({"users": users(20)}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["created"].as_i64()),
        (StatusCode::CREATED, Some(20))
    );
    let r = t
        .post(
            "/api/v1/admin/users",
            Some(ADMIN),
            json!({"users": users(25)}),
        )
        .await;
    assert_eq!(r.json()["created"], 5);
    t.login("13700000003").await;
}

/// The bulk sign-up hashes every password (here at Argon2's real cost,
/// one at a time) before its one write: a request outlasting the API's
/// deadline (300 ms here) is answered within its own,
/// `bulk_users_timeout_ms`. Cut off by a deadline, it writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_sign_up_outlasting_the_request_deadline_has_a_deadline_of_its_own() {
    let slow_hashes = |bulk_ms: u64| {
        move |c: &mut seckill::config::Config| {
            c.local_tx_timeout_ms = 200;
            c.ledger_rebuild_quiet_ms = 200;
            c.request_timeout_ms = 300;
            c.bulk_users_timeout_ms = bulk_ms;
            c.argon2_memory_kib = 19_456;
            c.argon2_iterations = 2;
            c.password_hashes_max_in_flight = 1;
        }
    };
    // ~20 ms a hash on a fast core: five times the request deadline at least.
    let users: Vec<_> = (0..150)
        .map(|i| json!({"phone": format!("1371000{i:04}"), "name": "u", "password": "secret-pass"}))
        .collect();
    let created = |t: &TestApp| {
        let store = t.app.state.ports.store.clone();
        async move { store.user_by_phone("13710000149").await.unwrap().is_some() }
    };

    let t = TestApp::spawn_with(slow_hashes(300)).await;
    let r = t
        .post("/api/v1/admin/users", Some(ADMIN), json!({"users": users}))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
    assert!(!created(&t).await, "a bulk sign-up cut off wrote accounts");

    let t = TestApp::spawn_with(slow_hashes(120_000)).await;
    let r = t
        .post("/api/v1/admin/users", Some(ADMIN), json!({"users": users}))
        .await;
    assert_eq!(
        (r.status, r.json()["created"].as_i64()),
        (StatusCode::CREATED, Some(150))
    );
    assert!(created(&t).await);
}

#[tokio::test]
async fn stats_show_db_and_cache_stock_and_the_journal() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(3).await;
    let b = t.user("13900000003").await;
    assert_eq!(t.buy(&b, promo, item).await.status, StatusCode::CREATED);
    let s = t.settled(promo).await;
    assert_eq!(s["stock_db"], 2);
    assert_eq!(s["stock_cache"], 2);
    assert_eq!(s["sold"], 1);
    assert_eq!(s["orders"], 1);
    assert_eq!(
        s["stock_log"],
        json!({"init": 0, "committed": 1, "rolled_back": 0})
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint() {
    let t = TestApp::spawn().await;
    let doc = t.get("/api/openapi.json", None).await.json();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/otp",
        "/api/v1/users",
        "/api/v1/sessions",
        "/api/v1/sessions/current",
        "/api/v1/me",
        "/api/v1/items",
        "/api/v1/items/{id}",
        "/api/v1/promos/{id}/captcha",
        "/api/v1/promos/{id}/tokens",
        "/api/v1/orders",
        "/api/v1/orders/{order_no}",
        "/api/v1/orders/{order_no}/pay",
        "/api/v1/orders/{order_no}/cancel",
        "/api/v1/admin/users",
        "/api/v1/admin/items",
        "/api/v1/admin/items/{id}",
        "/api/v1/admin/promos",
        "/api/v1/admin/promos/{id}/publish",
        "/api/v1/admin/promos/{id}/end",
        "/api/v1/admin/promos/{id}/stats",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    // A generated client names a method after each operation: one name
    // each.
    let mut ids = std::collections::HashMap::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            if let Some(id) = op["operationId"].as_str() {
                if let Some(other) = ids.insert(id.to_owned(), format!("{method} {path}")) {
                    panic!("operationId {id} of {method} {path} is also {other}'s");
                }
            }
        }
    }
    // The captcha is an image, not a JSON list of numbers.
    let png = &paths["/api/v1/promos/{id}/captcha"]["get"]["responses"]["200"]["content"]
        ["image/png"]["schema"];
    let png = match png.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => png,
    };
    assert_eq!(
        (png["type"].as_str(), png["format"].as_str()),
        (Some("string"), Some("binary")),
        "{png}"
    );
}

#[tokio::test]
async fn readiness_names_a_dependency_that_is_down() {
    let t = TestApp::spawn_with(|c| c.heartbeat_interval_ms = 100).await;
    assert_eq!(t.get("/readyz", None).await.status, StatusCode::OK);
    t.app.memory_bus.as_ref().unwrap().refuse_sends(true);
    let r = readiness_becomes(&t, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(r.json()["checks"]["message_bus"]
        .as_str()
        .unwrap()
        .starts_with("down"));
}

/// A crowd polling `/readyz` costs one dependency check a heartbeat
/// interval, not one a request.
#[tokio::test]
async fn readiness_polled_by_a_crowd_checks_the_dependencies_once_an_interval() {
    let t = TestApp::spawn_with(|c| c.heartbeat_interval_ms = 60_000).await;
    assert_eq!(t.get("/readyz", None).await.status, StatusCode::OK);
    // The bus goes down: polls at once still read the check taken before
    // (the bus is not asked) …
    let bus = t.app.memory_bus.as_ref().unwrap();
    bus.refuse_sends(true);
    let polls = (0..50).map(|_| t.get("/readyz", None));
    for r in futures::future::join_all(polls).await {
        assert_eq!(r.status, StatusCode::OK);
    }
    // … and within a second, however long the heartbeat's interval, the
    // check is taken again.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(
        t.get("/readyz", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// An instance whose configured node id another process holds takes no
/// orders: it says so at /readyz (balancers send the crowd elsewhere) and
/// answers orders 503 until the id is free.
#[tokio::test]
async fn an_instance_without_its_node_id_is_not_ready_and_takes_no_orders() {
    use seckill::cache::KvStore;
    let t = TestApp::spawn_with(|c| c.heartbeat_interval_ms = 100).await;
    let (item, promo) = t.sale(5).await;
    let b = t.user("13600000951").await;
    let kv = t.app.memory_kv.clone().unwrap();
    // The store forgot the lease and another process took the id.
    kv.delete("node:1").await.unwrap();
    kv.set_if_absent("node:1", "another", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let r = readiness_becomes(&t, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(r.json()["checks"]["node_id"]
        .as_str()
        .unwrap()
        .starts_with("not owned"));
    let o = t.buy(&b, promo, item).await;
    assert_eq!(o.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", o.json());

    kv.delete("node:1").await.unwrap();
    readiness_becomes(&t, StatusCode::OK).await;
    let o = t.buy(&b, promo, item).await;
    assert_eq!(o.status, StatusCode::CREATED, "{:?}", o.json());
}

/// `/readyz` once it answers `status` (asked every 50 ms, for 2.5 s at
/// most: a heartbeat renews the lease every 100 ms here).
async fn readiness_becomes(t: &TestApp, status: StatusCode) -> Resp {
    let mut r = t.get("/readyz", None).await;
    for _ in 0..50 {
        if r.status == status {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        r = t.get("/readyz", None).await;
    }
    assert_eq!(r.status, status, "{:?}", r.json());
    r
}

#[tokio::test]
async fn metrics_are_exposed_in_prometheus_text() {
    let t = TestApp::spawn().await;
    t.get("/api/v1/items", None).await;
    t.get("/api/v1/items/999999", None).await;
    // An invented method is counted, under one label for all such.
    t.call("BREW", "/api/v1/no-such-thing", None, None).await;
    // Refused orders, by reason (each reason's handle is kept per thread).
    let b = t.user("13600000901").await;
    for _ in 0..2 {
        let r = t.order(&b, 999_999, 1, "x").await;
        assert_eq!(r.code(), "NOT_FOUND");
    }
    let r = t.get("/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8(r.bytes).unwrap();
    for series in [
        r#"seckill_http_requests_total{method="GET",route="/api/v1/items",status="200"}"#,
        r#"seckill_http_requests_total{method="GET",route="/api/v1/items/{id}",status="404"}"#,
        r#"seckill_http_requests_total{method="OTHER",route="/api/{*rest}",status="404"}"#,
        r#"seckill_http_request_duration_seconds_count{method="GET",route="/api/v1/items/{id}"}"#,
    ] {
        assert!(text.contains(series), "{series} missing in:\n{text}");
    }
    assert!(!text.contains(r#"method="BREW""#), "{text}");
    // Counted, not only registered: this test alone sends an invented method.
    let other = series_value(&text, r#"seckill_http_requests_total{method="OTHER""#);
    assert!(other.is_some_and(|n| n >= 1.0), "{text}");
    let not_found = series_value(&text, r#"seckill_orders_refused_total{reason="not_found"}"#);
    assert!(not_found.is_some_and(|n| n >= 2.0), "{text}");
}

/// The value of the first series whose line starts with `prefix`.
fn series_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn the_web_pages_are_served() {
    let t = TestApp::spawn().await;
    let r = t.get("/", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&r.bytes).contains("<html"));
    let page = t.get("/item.html", None).await;
    assert_eq!(page.status, StatusCode::OK);
    // Never inside another site's frame, never sniffed as another type.
    for r in [&r, &page] {
        let h = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(h("x-frame-options"), Some("DENY"));
        assert_eq!(h("content-security-policy"), Some("frame-ancestors 'none'"));
        assert_eq!(h("x-content-type-options"), Some("nosniff"));
    }
}

#[tokio::test]
async fn the_dashboard_sees_refusals_by_reason_and_every_instance_with_its_health() {
    let t = TestApp::spawn_with(|c| c.heartbeat_interval_ms = 100).await;
    let (item, promo) = t.sale(1).await;
    let buyers = t.users("1370000", 3).await;
    assert_eq!(
        t.buy(&buyers[0], promo, item).await.status,
        StatusCode::CREATED
    );
    for b in &buyers[1..] {
        assert_eq!(t.buy(b, promo, item).await.code(), "SOLD_OUT");
    }
    let again = t.buy(&buyers[0], promo, item).await.code();
    assert!(again == "SOLD_OUT" || again == "ALREADY_BOUGHT", "{again}");
    // Bad input and unknown promos are nobody's refusals: no shared
    // counters for ids anybody can make up.
    for p in [promo, 999_999] {
        let r = t
            .post(
                "/api/v1/orders",
                Some(&buyers[1]),
                json!({"promo_id": p, "item_id": item, "amount": 0, "token": "x"}),
            )
            .await;
        assert_eq!(r.code(), "INVALID_ARGUMENT");
    }
    let r = t
        .post(
            "/api/v1/orders",
            Some(&buyers[1]),
            json!({"promo_id": 999_999, "item_id": item, "amount": 1, "token": "x"}),
        )
        .await;
    assert_eq!(r.code(), "NOT_FOUND");
    // Counted locally, flushed to the shared counters on the next beat.
    let mut stats = serde_json::Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stats = t.stats(promo).await;
        if stats["refused"]["sold_out"].as_i64().unwrap_or(0) >= 2 {
            break;
        }
    }
    assert!(
        stats["refused"]["sold_out"].as_i64().unwrap_or(0) >= 2,
        "{stats}"
    );
    assert!(stats["refused"].get("invalid").is_none(), "{stats}");
    assert!(t
        .app
        .state
        .monitor
        .refusals(seckill::domain::PromoId(999_999))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(stats["sold"], 1);
    assert_eq!(stats["max_units_per_buyer"], 1);

    let r = t.get("/api/v1/admin/instances", Some(ADMIN)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let list = r.json()["instances"].as_array().cloned().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["stale"], false);
    assert_eq!(list[0]["checks"]["database"], "ok");
    assert_eq!(list[0]["checks"]["cache"], "ok");
    assert_eq!(list[0]["checks"]["message_bus"], "ok");
    // Users cannot see it.
    let r = t.get("/api/v1/admin/instances", Some(&buyers[0])).await;
    assert!(r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_promo_is_not_published_while_an_earlier_sale_of_its_item_is_still_settling() {
    use seckill::domain::{ItemId, OrderDraft, OrderNo, PromoId, StockLogId, UserId};
    let t = TestApp::spawn_with(short_in_flight_bound).await;
    let item = t.item(5).await;
    let first = t.promo(item, -10, 3).await;
    t.publish(first).await;
    // A reservation of the first sale not yet settled into the DB stock.
    let now = chrono::Utc::now();
    let id = StockLogId(t.app.context.ids.next_id().0);
    let draft = OrderDraft {
        stock_log_id: id,
        order_no: OrderNo::new(now, id),
        user_id: UserId(1),
        item_id: ItemId(item),
        promo_id: PromoId(first),
        amount: 2,
        unit_price_cents: 5000,
        created_at: now,
    };
    let store = t.app.context.ports.store.clone();
    store.insert_stock_logs(&[draft]).await.unwrap();
    // The first promo ends, and its in-flight bound passes.
    sleep_past_end(&t, first, IN_FLIGHT_MS as i64 + 50).await;
    let second = t.promo(item, 1, 3600).await;
    let r = t.try_publish(second).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.json());
    assert_eq!(r.code(), "CONFLICT");
    assert!(r.json()["message"].as_str().unwrap().contains("2 units"));
    // Once it is settled, publishing works.
    store.roll_back_stock_logs(&[id]).await.unwrap();
    t.publish(second).await;
}

/// An unpaid order of an earlier sale, cancelled, gives its unit back to
/// the item's DB stock and to that sale's ledger: a promo warmed meanwhile
/// would never see the unit (its ledger below the DB for good, the unit
/// never sold). A new promo of the item waits until every order of the
/// earlier sales is paid or cancelled.
#[tokio::test]
async fn a_promo_is_not_published_while_an_earlier_sale_of_its_item_has_unpaid_orders() {
    let t = TestApp::spawn_with(short_in_flight_bound).await;
    // The buyers first: the sale lasts 3 s.
    let buyers = t.users("1398000", 2).await;
    let item = t.item(5).await;
    let first = t.promo(item, -10, 3).await;
    t.publish(first).await;
    let mut orders = Vec::new();
    for b in &buyers {
        let r = t.buy(b, first, item).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        orders.push(r.json()["order_no"].as_str().unwrap().to_owned());
    }
    t.settled(first).await;
    sleep_past_end(&t, first, IN_FLIGHT_MS as i64 + 50).await;
    let second = t.promo(item, 1, 3600).await;
    let r = t.try_publish(second).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "CONFLICT"),
        "{:?}",
        r.json()
    );
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("2 orders") && message.contains("by about"),
        "{message}"
    );
    assert_eq!(
        t.stats(second).await["stock_cache"],
        serde_json::Value::Null
    );

    // One paid, one cancelled (its unit back in the DB stock): the earlier
    // sale is over, and the new one starts from all that is left.
    let r = t
        .post(
            &format!("/api/v1/orders/{}/pay", orders[0]),
            Some(&buyers[0]),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let r = t.try_publish(second).await;
    assert!(
        r.json()["message"].as_str().unwrap().contains("1 order of"),
        "{:?}",
        r.json()
    );
    let r = t
        .post(
            &format!("/api/v1/orders/{}/cancel", orders[1]),
            Some(&buyers[1]),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    t.publish(second).await;
    let stats = t.stats(second).await;
    assert_eq!(
        (&stats["stock_cache"], &stats["stock_db"]),
        (&4.into(), &4.into())
    );
}

/// request_timeout_ms + local_tx_timeout_ms + promo_cache_ttl_ms of
/// `short_in_flight_bound`.
const IN_FLIGHT_MS: u64 = 3_000;

fn short_in_flight_bound(c: &mut seckill::config::Config) {
    c.local_tx_timeout_ms = 500;
    c.ledger_rebuild_quiet_ms = 500;
    c.request_timeout_ms = 1_500;
    c.promo_cache_ttl_ms = 1_000;
}

/// Sleeps until `ms` milliseconds past the promo's `end_at`.
async fn sleep_past_end(t: &TestApp, promo: i64, ms: i64) {
    let r = t.get("/api/v1/admin/promos", Some(ADMIN)).await.json();
    let end_at = r["promos"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == promo))
        .and_then(|p| p["end_at"].as_str())
        .map(|s| chrono::DateTime::parse_from_rfc3339(s).unwrap())
        .expect("the promo is listed");
    let wait = end_at.with_timezone(&chrono::Utc) + chrono::Duration::milliseconds(ms)
        - chrono::Utc::now();
    if let Ok(wait) = wait.to_std() {
        tokio::time::sleep(wait).await;
    }
}

/// A sale can be stopped (a wrong price): from the end on its tokens and
/// orders are refused `PROMO_ENDED` on every instance, the orders placed
/// before stand, and ending it again changes nothing; a sale not started
/// yet never starts.
#[tokio::test]
async fn the_admin_ends_a_sale_early() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(5).await;
    let buyers = t.users("1376000", 2).await;
    let first = t.buy(&buyers[0], promo, item).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.json());
    // A token taken before the end is no good after it.
    let token = t.token_of(&buyers[1], promo, item).await;

    let t = &t;
    let end = |id: i64, auth: Option<&'static str>| async move {
        t.post(&format!("/api/v1/admin/promos/{id}/end"), auth, json!({}))
            .await
    };
    assert_eq!(end(promo, None).await.status, StatusCode::UNAUTHORIZED);
    let r = end(promo, Some(ADMIN)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json()["status"], "ended");
    let ended_at = r.json()["end_at"].clone();
    let o = t.order(&buyers[1], promo, item, &token).await;
    assert_eq!(o.code(), "PROMO_ENDED", "{:?}", o.json());
    assert_eq!(t.token(&buyers[1], promo, item).await.code(), "PROMO_ENDED");
    let detail = t.get(&format!("/api/v1/items/{item}"), None).await;
    assert_eq!(
        detail.json()["promo"]["status"],
        "ended",
        "{:?}",
        detail.json()
    );
    let mine = t.get("/api/v1/orders", Some(&buyers[0])).await;
    assert_eq!(
        mine.json()["orders"].as_array().unwrap().len(),
        1,
        "the order stands"
    );

    let again = end(promo, Some(ADMIN)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["end_at"], ended_at, "ended once");

    // Not started yet: it ends before it starts, published or not.
    let other = t.item(3).await;
    let later = t.promo(other, 600, 3600).await;
    t.publish(later).await;
    let r = end(later, Some(ADMIN)).await;
    assert_eq!(r.json()["status"], "ended", "{:?}", r.json());
    assert!(r.json()["start_at"] == r.json()["end_at"], "{:?}", r.json());
    assert_eq!(end(999_999, Some(ADMIN)).await.code(), "NOT_FOUND");
    // An ended sale is never published.
    let third = t.item(3).await;
    let unpublished = t.promo(third, 600, 3600).await;
    end(unpublished, Some(ADMIN)).await;
    let r = t.try_publish(unpublished).await;
    assert_eq!(r.code(), "PROMO_ENDED", "{:?}", r.json());
}

/// Each promo's ledger is warmed from the item's stock: two published sales
/// of one item would sell it twice. A second promo of the item is published
/// only once the first has ended and its last orders had time to reach the
/// database.
#[tokio::test]
async fn an_item_has_one_published_sale_at_a_time() {
    let t = TestApp::spawn_with(short_in_flight_bound).await;
    let item = t.item(5).await;
    let first = t.promo(item, -10, 5).await;
    t.publish(first).await;
    let second = t.promo(item, 6, 3600).await;
    let r = t.try_publish(second).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "CONFLICT")
    );
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(&format!("promo {first}")) && message.contains("runs until"),
        "{message}"
    );
    assert_eq!(
        t.stats(second).await["stock_cache"],
        serde_json::Value::Null,
        "not warmed"
    );

    sleep_past_end(&t, first, 50).await;
    let r = t.try_publish(second).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("may reach the database until"),
        "{:?}",
        r.json()
    );
    // Past the request and local-transaction deadlines, within the promo
    // cache's TTL (an instance that missed an early end's broadcast still
    // sells): still refused.
    sleep_past_end(&t, first, 2_300).await;
    assert_eq!(t.try_publish(second).await.status, StatusCode::CONFLICT);

    sleep_past_end(&t, first, IN_FLIGHT_MS as i64 + 50).await;
    t.publish(second).await;
    assert_eq!(t.stats(second).await["stock_cache"], 5);
}

/// Two admins publishing two promos of one item at the same moment: one
/// wins, the other is refused and its promo's stock is not warmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_promos_of_one_item_published_at_once_one_wins() {
    let t = TestApp::spawn().await;
    for _ in 0..5 {
        let item = t.item(5).await;
        let a = t.promo(item, 10, 20).await;
        let b = t.promo(item, 30, 40).await;
        let t = &t;
        let publish = |p: i64| async move {
            t.call(
                "POST",
                &format!("/api/v1/admin/promos/{p}/publish"),
                Some(ADMIN),
                None,
            )
            .await
        };
        let (ra, rb) = tokio::join!(publish(a), publish(b));
        let mut statuses = [ra.status, rb.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "{:?} {:?}",
            ra.json(),
            rb.json()
        );
        let loser = if ra.status == StatusCode::OK { b } else { a };
        assert_eq!(
            t.stats(loser).await["stock_cache"],
            serde_json::Value::Null,
            "the loser is not warmed"
        );
    }
}

/// A publish that failed after its warm-up (the DB write refused, the
/// request cut off) left the promo's ledger loaded from the stock of then.
/// Publishing again loads it afresh from today's stock instead of keeping
/// it (it would sell units another sale sold meanwhile).
#[tokio::test]
async fn publishing_again_after_a_failed_publish_warms_from_todays_stock() {
    let t = TestApp::spawn().await;
    let item = t.item(5).await;
    let promo = t.promo(item, 10, 3600).await;
    let ledger = t.app.state.ports.ledger.clone();
    let p = seckill::domain::PromoId(promo);
    ledger.warm(p, 9, 1).await.unwrap();
    t.publish(promo).await;
    assert_eq!(ledger.stock(p).await.unwrap(), Some(5));
}

/// The same promo published twice at once: both answers are 200 (publishing
/// again changes nothing), one warm-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_promo_published_twice_at_once_is_published_once() {
    let t = TestApp::spawn().await;
    for _ in 0..5 {
        let item = t.item(5).await;
        let promo = t.promo(item, 10, 20).await;
        let uri = format!("/api/v1/admin/promos/{promo}/publish");
        let (a, b) = tokio::join!(
            t.call("POST", &uri, Some(ADMIN), None),
            t.call("POST", &uri, Some(ADMIN), None)
        );
        assert_eq!(
            (a.status, b.status),
            (StatusCode::OK, StatusCode::OK),
            "{:?} {:?}",
            a.json(),
            b.json()
        );
        assert_eq!(
            (
                a.json()["published"].as_bool(),
                b.json()["published"].as_bool()
            ),
            (Some(true), Some(true))
        );
        assert_eq!(t.stats(promo).await["stock_cache"], 5);
    }
}
