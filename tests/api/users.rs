use axum::http::{header, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_user_registers_with_a_one_time_code_and_logs_in() {
    let t = TestApp::spawn().await;
    let session = t.user("13800000001").await;
    let me = t.get("/api/v1/me", Some(&session)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["phone"], "13800000001");
    assert!(me.json().get("password").is_none() && me.json().get("password_hash").is_none());
}

/// A stand-in SMS gateway: records what it is handed, answers `status`.
async fn gateway(
    status: StatusCode,
) -> (
    String,
    std::sync::Arc<parking_lot::Mutex<Vec<(Option<String>, serde_json::Value)>>>,
) {
    let got = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::Json<serde_json::Value>| {
                let seen = seen.clone();
                async move {
                    let auth = headers
                        .get(header::AUTHORIZATION)
                        .map(|v| v.to_str().unwrap().to_owned());
                    seen.lock().push((auth, body.0));
                    status
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test]
async fn one_time_codes_go_to_the_configured_webhook() {
    let (url, got) = gateway(StatusCode::NO_CONTENT).await;
    let t = TestApp::spawn_with(|c| {
        c.otp_webhook_url = Some(url);
        c.otp_webhook_token = Some(seckill::config::Secret("gateway-secret".into()));
    })
    .await;
    let r = t
        .post("/api/v1/otp", None, json!({"phone": "13800000041"}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.json());
    assert_eq!(
        t.app.otp.last_code("13800000041"),
        None,
        "not the dev sender"
    );
    let (auth, body) = got.lock().pop().expect("the gateway was handed the code");
    assert_eq!(auth.as_deref(), Some("Bearer gateway-secret"));
    assert_eq!(body["phone"], "13800000041");
    let code = body["code"].as_str().unwrap().to_owned();
    let r = t
        .post(
            "/api/v1/users",
            None,
            json!({"phone": "13800000041", "otp": code, "name": "B", "password": "secret-pass"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());

    // A gateway that refuses: 503, the user asks again.
    let (url, _) = gateway(StatusCode::INTERNAL_SERVER_ERROR).await;
    let t = TestApp::spawn_with(|c| c.otp_webhook_url = Some(url)).await;
    let r = t
        .post("/api/v1/otp", None, json!({"phone": "13800000042"}))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
}

#[tokio::test]
async fn login_sets_an_http_only_cookie_that_authenticates() {
    let t = TestApp::spawn().await;
    t.user("13800000002").await;
    let r = t
        .post(
            "/api/v1/sessions",
            None,
            json!({"phone": "13800000002", "password": "secret-pass"}),
        )
        .await;
    let cookie = r
        .headers
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.starts_with("seckill_session="));
    assert!(
        cookie.contains("SameSite=Lax") && !cookie.contains("Secure"),
        "plain HTTP (a developer's machine): {cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let req = axum::http::Request::get("/api/v1/me")
        .header(header::COOKIE, pair)
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(t.send(req).await.status, StatusCode::OK);

    // Behind a proxy that took the request over HTTPS: never sent over
    // plain HTTP again, logging in nor out.
    for (method, uri, body) in [
        (
            "POST",
            "/api/v1/sessions",
            r#"{"phone":"13800000002","password":"secret-pass"}"#,
        ),
        ("DELETE", "/api/v1/sessions/current", ""),
    ] {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-forwarded-proto", "https")
            .body(axum::body::Body::from(body))
            .unwrap();
        let r = t.send(req).await;
        let cookie = r.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
        assert!(
            cookie.contains("SameSite=Lax; Secure"),
            "{method} {uri}: {cookie}"
        );
    }
}

#[tokio::test]
async fn another_sites_page_cannot_change_anything_with_the_cookie() {
    let t = TestApp::spawn_with(|c| {
        c.cors_origins = "https://shop.example".into();
        c.cookie_secure = true; // SameSite=None: the browser sends it cross-site
    })
    .await;
    let bearer = t.user("13800000033").await;
    let r = t
        .post(
            "/api/v1/sessions",
            None,
            json!({"phone": "13800000033", "password": "secret-pass"}),
        )
        .await;
    let set = r.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(set.contains("SameSite=None"));
    let pair = set.split(';').next().unwrap().to_owned();
    let logout = |origin: Option<&str>, host: &str, by_cookie: bool| {
        let mut req =
            axum::http::Request::delete("/api/v1/sessions/current").header(header::HOST, host);
        req = if by_cookie {
            req.header(header::COOKIE, pair.as_str())
        } else {
            req.header(header::AUTHORIZATION, format!("Bearer {bearer}"))
        };
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        t.send(req.body(axum::body::Body::empty()).unwrap())
    };
    for evil in [
        "https://evil.example",
        "null",
        "https://api.shop.example.evil.example",
    ] {
        let r = logout(Some(evil), "api.shop.example", true).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::FORBIDDEN, "FORBIDDEN"),
            "{evil}"
        );
    }
    let me = axum::http::Request::get("/api/v1/me")
        .header(header::COOKIE, pair.as_str())
        .header(header::ORIGIN, "https://evil.example")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(
        t.send(me).await.status,
        StatusCode::OK,
        "reading is CORS's business"
    );
    // A bearer is no ambient credential: any origin may send it.
    assert_eq!(
        logout(Some("https://evil.example"), "api.shop.example", false)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    // The site's own pages (any port: nginx passes the host alone), a listed
    // origin, and clients that name no origin.
    assert_eq!(
        logout(
            Some("http://api.shop.example:8088"),
            "api.shop.example",
            true
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    for (origin, phone) in [
        (Some("https://shop.example"), "13800000034"),
        (None, "13800000035"),
    ] {
        t.user(phone).await;
        let r = t
            .post(
                "/api/v1/sessions",
                None,
                json!({"phone": phone, "password": "secret-pass"}),
            )
            .await;
        let set = r.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
        let mut req = axum::http::Request::delete("/api/v1/sessions/current")
            .header(header::HOST, "api.shop.example")
            .header(header::COOKIE, set.split(';').next().unwrap());
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        assert_eq!(
            t.send(req.body(axum::body::Body::empty()).unwrap())
                .await
                .status,
            StatusCode::NO_CONTENT,
            "{origin:?}"
        );
    }
}

/// Drawing a captcha replaces the buyer's pending one: another site's page
/// asking for it as an image (no `Origin`, marked cross-site by the
/// browser) with the visitor's cookie is refused; the site's own pages, a
/// client that is no browser and a bearer token are not.
#[tokio::test]
async fn another_sites_image_cannot_draw_a_captcha_with_the_cookie() {
    let t = TestApp::spawn_with(|c| {
        c.captcha_enabled = true;
        c.cookie_secure = true;
    })
    .await;
    let (_, promo) = t.sale(5).await;
    let bearer = t.user("13800000036").await;
    let r = t
        .post(
            "/api/v1/sessions",
            None,
            json!({"phone": "13800000036", "password": "secret-pass"}),
        )
        .await;
    let set = r.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();
    let draw = |fetch_site: Option<&str>, by_cookie: bool| {
        let mut req = axum::http::Request::get(format!("/api/v1/promos/{promo}/captcha"));
        req = if by_cookie {
            req.header(header::COOKIE, cookie.as_str())
        } else {
            req.header(header::AUTHORIZATION, format!("Bearer {bearer}"))
        };
        if let Some(site) = fetch_site {
            req = req.header("sec-fetch-site", site);
        }
        t.send(req.body(axum::body::Body::empty()).unwrap())
    };
    let r = draw(Some("cross-site"), true).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    for site in [Some("same-origin"), Some("none"), None] {
        assert_eq!(draw(site, true).await.status, StatusCode::OK, "{site:?}");
    }
    assert_eq!(draw(Some("cross-site"), false).await.status, StatusCode::OK);
    // Reading stays CORS's business: other GETs are not refused.
    let me = axum::http::Request::get("/api/v1/me")
        .header(header::COOKIE, cookie.as_str())
        .header("sec-fetch-site", "cross-site")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(t.send(me).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_stale_bearer_beside_a_live_cookie_authenticates_and_a_cookie_is_no_admin() {
    let t = TestApp::spawn().await;
    let session = t.user("13800000009").await;
    let pair = format!("seckill_session={session}");
    let with = |bearer: Option<&str>, uri: &str| {
        let mut b = axum::http::Request::get(uri).header(header::COOKIE, &pair);
        if let Some(bearer) = bearer {
            b = b.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        b.body(axum::body::Body::empty()).unwrap()
    };
    // Either one authenticates: a logged-out bearer does not hide the cookie.
    let r = t.send(with(Some("no-such-session"), "/api/v1/me")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["phone"], "13800000009");
    // A user's session on an admin endpoint is 403, cookie or bearer.
    let r = t.send(with(None, "/api/v1/admin/promos/1/stats")).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    let r = t.get("/api/v1/admin/promos/1/stats", Some(&session)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    // A cookie of no session, or nothing at all: 401.
    let forged = axum::http::Request::get("/api/v1/admin/promos/1/stats")
        .header(header::COOKIE, "seckill_session=no-such-session")
        .body(axum::body::Body::empty())
        .unwrap();
    let r = t.send(forged).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
    let r = t.get("/api/v1/admin/promos/1/stats", None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
}

#[tokio::test]
async fn a_wrong_code_is_refused_and_used_up() {
    let t = TestApp::spawn().await;
    t.post("/api/v1/otp", None, json!({"phone": "13800000003"}))
        .await;
    let code = t.app.otp.last_code("13800000003").unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let body = |otp: &str| json!({"phone": "13800000003", "otp": otp, "name": "x", "password": "secret-pass"});
    let r = t.post("/api/v1/users", None, body(wrong)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_ARGUMENT")
    );
    let r = t.post("/api/v1/users", None, body(&code)).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the code was used up by the wrong guess"
    );
}

#[tokio::test]
async fn a_phone_registers_only_once() {
    let t = TestApp::spawn().await;
    t.user("13800000004").await;
    t.post("/api/v1/otp", None, json!({"phone": "13800000004"}))
        .await;
    let code = t.app.otp.last_code("13800000004").unwrap();
    let r = t
        .post(
            "/api/v1/users",
            None,
            json!({"phone": "13800000004", "otp": code, "name": "x", "password": "secret-pass"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "CONFLICT")
    );
}

#[tokio::test]
async fn one_time_codes_are_rate_limited_per_phone() {
    let t = TestApp::spawn_with(|c| c.otp_per_phone_per_hour = 2).await;
    for _ in 0..2 {
        assert_eq!(
            t.post("/api/v1/otp", None, json!({"phone": "13800000005"}))
                .await
                .status,
            StatusCode::ACCEPTED
        );
    }
    let r = t
        .post("/api/v1/otp", None, json!({"phone": "13800000005"}))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
    );
    // Two an hour: the next one in half an hour, not in a second.
    assert_eq!(r.headers["retry-after"], "1800");
    assert_eq!(
        t.post("/api/v1/otp", None, json!({"phone": "13800000006"}))
            .await
            .status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn a_wrong_password_is_unauthenticated_and_logins_are_rate_limited() {
    let t = TestApp::spawn_with(|c| c.login_attempts_per_phone_per_minute = 3).await;
    t.user("13800000007").await; // one attempt used
    for _ in 0..2 {
        let r = t
            .post(
                "/api/v1/sessions",
                None,
                json!({"phone": "13800000007", "password": "wrong-pass"}),
            )
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
        );
    }
    let r = t
        .post(
            "/api/v1/sessions",
            None,
            json!({"phone": "13800000007", "password": "secret-pass"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Three a minute: one more in 20 s.
    assert_eq!(r.headers["retry-after"], "20");
}

#[tokio::test]
async fn logging_out_ends_the_session() {
    let t = TestApp::spawn().await;
    let s = t.user("13800000008").await;
    assert_eq!(
        t.call("DELETE", "/api/v1/sessions/current", Some(&s), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = t.get("/api/v1/me", Some(&s)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
    // Again, or with a session nobody knows (a restarted embedded
    // instance's), or none: still 204, and the cookie cleared, so a
    // browser can drop a stale HttpOnly cookie.
    for token in [Some(s.as_str()), Some("forgotten"), None] {
        let r = t
            .call("DELETE", "/api/v1/sessions/current", token, None)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{token:?}");
        let cookie = r.headers[axum::http::header::SET_COOKIE].to_str().unwrap();
        assert!(
            cookie.starts_with("seckill_session=;") && cookie.contains("Max-Age=0"),
            "{cookie}"
        );
    }
}

#[tokio::test]
async fn forged_sessions_are_refused() {
    let t = TestApp::spawn().await;
    for token in ["", "forged", &"x".repeat(500)] {
        let r = t.get("/api/v1/me", Some(token)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    assert_eq!(
        t.get("/api/v1/me", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn cors_is_granted_with_credentials_to_listed_origins_only() {
    let t = TestApp::spawn_with(|c| c.cors_origins = "http://shop.example:3000".into()).await;
    let preflight = |origin: &str| {
        axum::http::Request::builder()
            .method("OPTIONS")
            .uri("/api/v1/me")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let ok = t.send(preflight("http://shop.example:3000")).await;
    assert_eq!(
        ok.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
        "http://shop.example:3000"
    );
    assert_eq!(
        ok.headers
            .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .unwrap(),
        "true"
    );
    let no = t.send(preflight("http://evil.example")).await;
    assert!(no
        .headers
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    // A page's script may read Retry-After (it backs off as told).
    let r = t
        .send(
            axum::http::Request::builder()
                .uri("/api/v1/me")
                .header(header::ORIGIN, "http://shop.example:3000")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert!(r
        .headers
        .get(header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .is_some_and(|v| v
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("retry-after")));
}

#[tokio::test]
async fn a_password_of_any_script_up_to_128_characters_logs_in() {
    let t = TestApp::spawn().await;
    let phone = "13800000031";
    let password = "秒".repeat(128); // 384 bytes
    assert_eq!(
        t.post("/api/v1/otp", None, json!({"phone": phone}))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let otp = t.app.otp.last_code(phone).unwrap();
    let r = t
        .post(
            "/api/v1/users",
            None,
            json!({"phone": phone, "otp": otp, "name": "Buyer", "password": password}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let login = |password: String| {
        t.post(
            "/api/v1/sessions",
            None,
            json!({"phone": phone, "password": password}),
        )
    };
    assert_eq!(login(password.clone()).await.status, StatusCode::CREATED);
    assert_eq!(
        login("秒".repeat(129)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // An unknown phone is refused like a wrong password.
    let r = t
        .post(
            "/api/v1/sessions",
            None,
            json!({"phone": "13800000032", "password": password}),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
}

async fn login_from(t: &TestApp, phone: &str, ip: &str) -> StatusCode {
    login_with(t, phone, "x-real-ip", ip).await
}

async fn login_with(t: &TestApp, phone: &str, header: &str, value: &str) -> StatusCode {
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/api/v1/sessions")
        .header("content-type", "application/json")
        .header(header, value)
        .body(axum::body::Body::from(
            serde_json::json!({"phone": phone, "password": "wrong-password"}).to_string(),
        ))
        .unwrap();
    t.send(req).await.status
}

#[tokio::test]
async fn logins_are_limited_per_client_address_from_the_trusted_proxy_header() {
    let t = TestApp::spawn_with(|c| {
        c.login_attempts_per_ip_per_minute = 3;
        c.client_ip_header = Some("x-real-ip".into());
    })
    .await;
    // Different phones (the per-phone limit stays out of it), one address.
    for i in 0..3 {
        let s = login_from(&t, &format!("1360000000{i}"), "203.0.113.7").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        login_from(&t, "13600000009", "203.0.113.7").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_from(&t, "13600000008", "198.51.100.1").await,
        StatusCode::UNAUTHORIZED,
        "another address is not limited"
    );
}

#[tokio::test]
async fn of_a_forwarded_for_list_the_address_our_proxy_appended_is_the_clients() {
    let t = TestApp::spawn_with(|c| {
        c.login_attempts_per_ip_per_minute = 2;
        c.client_ip_header = Some("x-forwarded-for".into());
    })
    .await;
    // nginx's `$proxy_add_x_forwarded_for` appends the peer to whatever the
    // client sent: a new made-up address each time dodges nothing.
    for i in 0..2 {
        let list = format!("10.9.8.{i}, 203.0.113.7");
        let s = login_with(&t, &format!("1370000000{i}"), "x-forwarded-for", &list).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let s = login_with(
        &t,
        "13700000009",
        "x-forwarded-for",
        "10.9.8.77, 203.0.113.7",
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let s = login_with(
        &t,
        "13700000008",
        "x-forwarded-for",
        "203.0.113.7, 198.51.100.1",
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "another client behind the proxy"
    );
}

/// Logins for made-up phones cost a real hash each; past
/// `password_hashes_max_waiting` waiting for a place, the next login is
/// answered 429 at once instead of queueing until the request's time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_past_the_hash_queue_is_answered_429_at_once() {
    let t = TestApp::spawn_with(|c| {
        c.argon2_memory_kib = 19_456;
        c.argon2_iterations = 2;
        c.password_hashes_max_in_flight = 1;
        c.password_hashes_max_waiting = 2;
    })
    .await;
    let logins = (0..24).map(|i| {
        t.post(
            "/api/v1/sessions",
            None,
            json!({"phone": format!("1372000{i:04}"), "password": "wrong-password"}),
        )
    });
    let answers = futures::future::join_all(logins).await;
    let mut busy = 0;
    for r in &answers {
        match r.status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.code(), "RATE_LIMITED");
                assert!(r.headers.contains_key("retry-after"));
                busy += 1;
            }
            other => panic!("login answered {other}: {:?}", r.json()),
        }
    }
    // One hashing, two waiting: of 24 at once, most are turned away.
    assert!(busy >= 12, "{busy} of 24 logins answered 429");
    // Once the flood has passed, a login is answered again.
    let r = t
        .post(
            "/api/v1/sessions",
            None,
            json!({"phone": "13720009999", "password": "wrong-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_client_address_header_is_ignored_unless_configured() {
    let t = TestApp::spawn_with(|c| c.login_attempts_per_ip_per_minute = 2).await;
    // Without a trusted proxy the header is the client's own claim: a
    // spoofer cannot get other addresses limited (nor dodge its own limit).
    for i in 0..5 {
        let s = login_from(&t, &format!("1350000000{i}"), "203.0.113.7").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn expired_sessions_seckill_tokens_and_captchas_are_refused() {
    let t = TestApp::spawn_with(|c| {
        c.captcha_enabled = true;
        c.session_ttl_secs = 4;
        c.seckill_token_ttl_secs = 1;
        c.captcha_ttl_secs = 1;
    })
    .await;
    let (item, promo) = t.sale(5).await;
    let b = t.user("13800000031").await;
    // A captcha answered after its time.
    let answer = t.captcha_answer(&b, promo).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let r = t.token_with_captcha(&b, promo, item, &answer).await;
    assert_eq!(r.code(), "WRONG_CAPTCHA", "expired captcha");
    // A seckill token used after its time.
    let answer = t.captcha_answer(&b, promo).await;
    let r = t.token_with_captcha(&b, promo, item, &answer).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let r = t.order(&b, promo, item, &token).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "INVALID_TOKEN"),
        "expired token"
    );
    // The session itself, past its TTL.
    assert_eq!(t.get("/api/v1/me", Some(&b)).await.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    let r = t.get("/api/v1/me", Some(&b)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        "expired session"
    );
}

/// Collects everything the app logs, at every level.
#[derive(Clone, Default)]
struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn passwords_never_appear_in_logs_or_responses() {
    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // This test's runtime is single-threaded: every task it polls logs here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let t = TestApp::spawn().await;
    let password = "Very-Secret-Pass-4711";
    let phone = "13800000032";
    t.post("/api/v1/otp", None, json!({"phone": phone})).await;
    let otp = t.app.otp.last_code(phone).unwrap();
    let mut bodies = Vec::new();
    let r = t
        .post(
            "/api/v1/users",
            None,
            json!({"phone": phone, "otp": otp, "name": "P", "password": password}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    bodies.push(r.bytes);
    for attempt in [password, "Wrong-Pass-0815", password] {
        let r = t
            .post(
                "/api/v1/sessions",
                None,
                json!({"phone": phone, "password": attempt}),
            )
            .await;
        bodies.push(r.bytes);
    }
    let r = t
        .post(
            "/api/v1/admin/users",
            Some(ADMIN),
            json!({"users": [{"phone": "13800000033", "name": "Q", "password": password}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    bodies.push(r.bytes);
    // A registration refused for a bad field does not echo the password.
    let r = t
        .post(
            "/api/v1/users",
            None,
            json!({"phone": "x", "otp": "1", "name": "P", "password": password}),
        )
        .await;
    bodies.push(r.bytes);
    let hash = t
        .app
        .state
        .ports
        .store
        .user_by_phone(phone)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(
        !logs.is_empty(),
        "the app logged nothing: the sink is not wired"
    );
    for secret in [password, "Wrong-Pass-0815", hash.as_str()] {
        assert!(
            !logs.contains(secret),
            "a password is in the logs: {secret}"
        );
        for b in &bodies {
            assert!(
                !String::from_utf8_lossy(b).contains(secret),
                "a password is in a response"
            );
        }
    }
}

#[tokio::test]
async fn passwords_are_kept_as_argon2id_hashes_never_as_given() {
    let t = TestApp::spawn().await;
    t.user("13500000104").await;
    let user = t
        .app
        .state
        .ports
        .store
        .user_by_phone("13500000104")
        .await
        .unwrap()
        .expect("the account");
    assert!(
        user.password_hash.starts_with("$argon2id$"),
        "{}",
        user.password_hash
    );
    assert!(!user.password_hash.contains("secret-pass"));
}
