//! The official Python SDKs (stripe, anthropic, openai, qdrant-client) as
//! clients of a spawned `agentdrill serve`: one script per SDK under
//! `tests/sdk/`, any SDK error fails. `cargo xtask test` installs the SDKs
//! into `target/sdk-venv` and sets `AGENTDRILL_PYTHON`; without them these
//! tests fail and say so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A served instance on free ports, killed on drop.
struct Served {
    child: Child,
    env: Vec<(String, String)>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `agentdrill serve --port 0` and reads its `export` lines.
fn serve() -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(["serve", "--port", "0", "--seed", "5"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn agentdrill serve");
    let out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut env = Vec::new();
    for line in out.lines() {
        let line = line.expect("serve's stdout");
        if let Some((k, v)) = line.strip_prefix("export ").and_then(|kv| kv.split_once('=')) {
            env.push((k.to_owned(), v.to_owned()));
        }
        if line.starts_with("# agentdrill serve") {
            break;
        }
    }
    assert!(env.iter().any(|(k, _)| k == "AGENTDRILL_CONTROL_URL"), "serve printed no exports: {env:?}");
    Served { child, env }
}

/// The venv's python, or a failure that names the command to run.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = std::env::var_os("AGENTDRILL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/sdk-venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import stripe, anthropic, openai, qdrant_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the official Python SDKs are not installed at {}: run the tests with `cargo xtask test` \
         (it installs stripe, anthropic, openai and qdrant-client into target/sdk-venv)",
        p.display()
    );
    p
}

/// Runs `tests/sdk/<script>` against a fresh instance.
fn run(script: &str) {
    let python = python();
    let served = serve();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let out = Command::new(python)
        .arg(dir.join(script))
        .current_dir(&dir)
        .envs(served.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ANTHROPIC_API_KEY", "sk-ant-test")
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .expect("run python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{text}");
    assert!(text.contains("all checks passed"), "{script} did not finish:\n{text}");
}

#[test]
fn anthropic_sdk_tool_loop_streaming_and_errors() {
    run("anthropic_sdk.py");
}

#[test]
fn openai_sdk_tool_loop_streaming_fallback_and_errors() {
    run("openai_sdk.py");
}

#[test]
fn stripe_sdk_idempotency_retry_search_refund() {
    run("stripe_sdk.py");
}

#[test]
fn qdrant_client_snapshot_round_trip() {
    run("qdrant_sdk.py");
}

/// A request to the control API over a plain socket; returns the body.
fn control(served: &Served, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let url = &served.env.iter().find(|(k, _)| k == "AGENTDRILL_CONTROL_URL").expect("exported").1;
    let host = url.strip_prefix("http://").expect("http URL");
    let mut s = std::net::TcpStream::connect(host).expect("control API listens");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 2"), "{method} {path}: {out}");
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

#[test]
fn python_agent_example_one_effect_per_step() {
    let python = python();
    let served = serve();
    // The first charge's answer is lost after the charge committed: the
    // Stripe SDK retries with the agent's key and must get the replay.
    let toxic = r#"{"name":"lost","type":"reset_peer","attributes":{"after_effect":true},"count":1}"#;
    control(&served, "POST", "/proxies/payment/toxics", toxic);
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python-agent/agent.py");
    let out = Command::new(python)
        .args([agent.to_str().expect("utf-8 path"), "--job", "41", "--workflow", "book_flight"])
        .envs(served.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run the agent");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "agent failed:\n{text}");
    let report: serde_json::Value =
        serde_json::from_str(&control(&served, "GET", "/jobs/41?template=book_flight", "")).expect("JSON");
    let steps = report["steps"].as_array().expect("steps");
    let effects: Vec<(u64, u64)> = steps
        .iter()
        .filter(|s| s["side_effect"] == true)
        .map(|s| (s["step"].as_u64().unwrap(), s["effects"].as_u64().unwrap()))
        .collect();
    assert_eq!(effects, vec![(3, 1), (5, 1)], "exactly one effect per side-effecting step:\n{text}");
    let attempts: serde_json::Value =
        serde_json::from_str(&control(&served, "GET", "/attempts?fake=payment", "")).expect("JSON");
    let statuses: Vec<u64> =
        attempts["attempts"].as_array().unwrap().iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![0, 200], "the dropped answer and the SDK's retry");
}
