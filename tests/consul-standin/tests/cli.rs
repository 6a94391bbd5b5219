//! The binary with exactly the flags the testbed passes:
//! `consul-standin --listen ADDR --data-dir DIR --acl-token TOKEN --node NAME`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(port: u16, dir: &std::path::Path) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_consul-standin"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args(["--acl-token", "cli-token", "--node", "h7", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn consul-standin");
    Running(child)
}

async fn wait_serving(client: &reqwest::Client, base: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if client
            .get(format!("{base}/v1/status/leader"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("consul-standin did not start serving on {base}");
}

#[tokio::test]
async fn serves_with_the_testbed_flags_and_keeps_state_across_restarts() {
    let dir = std::env::temp_dir().join(format!("consul-standin-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let process = spawn(port, &dir);
    wait_serving(&client, &base).await;
    let denied = client
        .put(format!("{base}/v1/kv/a"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    let body = denied.text().await.unwrap();
    assert!(
        body.starts_with("Permission denied") && body.contains("'key:write' on \"a\""),
        "{body}"
    );
    let register = client
        .put(format!("{base}/v1/agent/service/register"))
        .header("X-Consul-Token", "cli-token")
        .body(r#"{"ID":"web-1","Name":"web","Port":8080,"Meta":{"fleet-app":"web"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(register.status().as_u16(), 200);
    let health: serde_json::Value = client
        .get(format!("{base}/v1/health/service/web"))
        .header("X-Consul-Token", "cli-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health[0]["Node"]["Node"], "h7");
    drop(process);

    let _process = spawn(port, &dir);
    wait_serving(&client, &base).await;
    let services: serde_json::Value = client
        .get(format!("{base}/v1/agent/services"))
        .header("X-Consul-Token", "cli-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(services["web-1"]["Meta"]["fleet-app"], "web");
    let _ = std::fs::remove_dir_all(&dir);
}
