//! `cargo xtask test`: the project's test command.
//!
//! Installs what the tests need and is missing, then runs `cargo test
//! --release`:
//! - the apt packages of [`APT_PACKAGES`] (each checked by a command first;
//!   `nodejs` among them, for the node agent's live drills);
//! - when a Docker daemon answers, the PostgreSQL image of the live drills'
//!   docker backend, built offline by `scripts/build-pg-image.sh` (a no-op
//!   when its tag exists);
//! - a Python venv of its own, `target/sdk-venv`, with the official SDKs of
//!   [`PIP_PACKAGES`] (the SDK tests run them against `agentdrill serve`).
//!
//! The venv's python is handed to the tests as `AGENTDRILL_PYTHON`.
//! Extra arguments go to `cargo test`: `cargo xtask test --test sdk`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// apt packages: (a shell check that passes when it is installed, package).
/// Add a line per package a test needs (chromium, postgresql-15, …).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("python3 -c 'import venv, ensurepip'", "python3-venv"),
    // tests/html_report.rs renders the HTML report headless.
    ("command -v chromium", "chromium"),
    ("test -d /usr/share/fonts/truetype/liberation", "fonts-liberation"),
    // tests/pg.rs and the live drills start PostgreSQL 15 (the local backend).
    ("command -v initdb || test -x /usr/lib/postgresql/15/bin/initdb", "postgresql-15"),
    // tests/live_drills.rs runs the node agent (examples/node-agent/, built-in fetch: Node 18+).
    ("command -v node", "nodejs"),
];

/// The official SDKs the SDK tests drive, pinned.
const PIP_PACKAGES: &[&str] = &["stripe==16.1.0", "anthropic==2.14.0", "openai==3.57.0", "qdrant-client==1.20.0"];

/// The modules those packages provide (checked before installing).
const PIP_MODULES: &str = "import stripe, anthropic, openai, qdrant_client";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => match test(&args[1..]) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!(
                "usage: cargo xtask test [cargo test arguments…]\n\ninstalls the apt packages (PostgreSQL 15 and Node.js among them) and the Python SDKs the tests need (into target/sdk-venv), builds the PostgreSQL image when Docker answers (scripts/build-pg-image.sh), then runs cargo test --release\n\nexample: cargo xtask test --test pg"
            );
            ExitCode::from(2)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is inside the repository").to_path_buf()
}

fn sh(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(cmd).status().is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: {cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{cmd:?} failed with {s}")),
        Err(e) => Err(format!("cannot run {cmd:?}: {e}")),
    }
}

/// Installs the missing apt packages.
fn apt() -> Result<(), String> {
    let missing: Vec<&str> =
        APT_PACKAGES.iter().filter(|(check, _)| !sh(&format!("{check} >/dev/null 2>&1"))).map(|(_, p)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The venv with the SDKs; returns its python.
fn venv(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target/sdk-venv");
    let python = dir.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&dir))?;
    }
    let has = Command::new(&python).args(["-c", PIP_MODULES]).output().is_ok_and(|o| o.status.success());
    if !has {
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(PIP_PACKAGES))?;
    }
    Ok(python)
}

/// Builds the docker backend's PostgreSQL image when a daemon answers.
fn pg_image(root: &Path) -> Result<(), String> {
    if !sh("docker version >/dev/null 2>&1") {
        eprintln!(
            "xtask: no Docker daemon answers: the PostgreSQL image is not built (the docker backend's tests need it)"
        );
        return Ok(());
    }
    run(Command::new("sh").arg(root.join("scripts/build-pg-image.sh")))
}

fn test(extra: &[String]) -> Result<ExitCode, String> {
    let root = root();
    apt()?;
    pg_image(&root)?;
    let python = venv(&root)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).args(["test", "--release"]).args(extra).env("AGENTDRILL_PYTHON", &python);
    eprintln!("xtask: AGENTDRILL_PYTHON={} {cmd:?}", python.display());
    let status = cmd.status().map_err(|e| format!("cannot run cargo test: {e}"))?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
