//! The binary itself: one embedded process per data file.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(db: &str, port: u16, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_seckill"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--database-url", db, "--no-captcha"])
        // Whatever this machine's environment says, the embedded default.
        .env_remove("SECKILL_REDIS_URL")
        .env_remove("SECKILL_ROCKETMQ_NAMESRV")
        .env_remove("SECKILL_DATABASE_URL")
        .env_remove("SECKILL_CONFIG")
        .env("SECKILL_NODE_ID", "7")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("the seckill binary starts")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_healthy(port: u16, child: &mut Child) {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the first instance exited ({status}) before it served");
        }
        assert!(Instant::now() < deadline, "the first instance never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With no Redis, the ledger lives in the process: a second `serve` on the
/// same SQLite file would sell its units again. It stops at start-up,
/// saying why, and the first one serves on; once the first is gone the
/// file is free again.
#[tokio::test]
async fn a_second_embedded_instance_on_the_same_database_stops_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/seckill.db", dir.path().display());
    let first_port = free_port();
    let mut first = Killed(serve(&db, first_port, Stdio::null()));
    wait_healthy(first_port, &mut first.0).await;

    let mut second = serve(&db, free_port(), Stdio::piped());
    // It stops by itself; one still running after 30 s is serving.
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second instance on the same database is still running after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second instance served: {stderr}"
    );
    assert!(
        stderr.contains("another seckill process holds") && stderr.contains("SECKILL_REDIS_URL"),
        "{stderr}"
    );
    let r = reqwest::get(format!("http://127.0.0.1:{first_port}/healthz"))
        .await
        .unwrap();
    assert!(r.status().is_success());

    drop(first);
    let third_port = free_port();
    let mut third = Killed(serve(&db, third_port, Stdio::null()));
    wait_healthy(third_port, &mut third.0).await;
}
