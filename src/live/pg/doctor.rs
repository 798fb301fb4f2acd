//! `agentdrill doctor`: which PostgreSQL backends work here, and why not.
//!
//! A backend "works" when a throw-away primary actually starts on it and
//! answers `SELECT version()` — not merely when its programs are found.

use std::path::Path;

use serde::Serialize;

use super::local::{RunAs, Tools};
use super::{Backend, Cluster, PgOptions, docker};

/// What was found for one backend.
#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    /// The backend.
    pub backend: Backend,
    /// A primary started and answered.
    pub works: bool,
    /// What was found (programs, versions, daemon, image), one fact a line.
    pub found: Vec<String>,
    /// Why it does not work, with the fix.
    pub why_not: Option<String>,
}

/// Every backend's status.
#[derive(Clone, Debug, Serialize)]
pub struct Doctor {
    /// `local`, then `docker`.
    pub backends: Vec<BackendStatus>,
}

impl Doctor {
    /// Whether the `local` backend works (`agentdrill doctor`'s exit code).
    pub fn local_works(&self) -> bool {
        self.backends.iter().any(|b| b.backend == Backend::Local && b.works)
    }
}

/// Checks both backends, starting a throw-away primary on each in
/// `<scratch>/doctor-<backend>` (removed afterwards).
pub async fn check(scratch: &Path) -> Doctor {
    let d = Doctor { backends: vec![check_local(scratch).await, check_docker(scratch).await] };
    // Only if empty: never a folder the user named with files in it.
    let _ = std::fs::remove_dir(scratch);
    d
}

async fn try_start(scratch: &Path, backend: Backend, found: &mut Vec<String>) -> Result<(), String> {
    let dir = scratch.join(format!("doctor-{}", backend.name()));
    let opts = PgOptions { backend, ..PgOptions::local(&dir, "doctor") };
    let node = Cluster::start_primary(&opts).await.map_err(|e| e.to_string())?;
    let db = node.connect().await.map_err(|e| e.to_string())?;
    let v: String = db.query_one("SELECT version()", &[]).await.map_err(|e| e.to_string())?.get(0);
    found.push(format!("started a primary on 127.0.0.1:{}: {v}", node.port()));
    drop(db);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn check_local(scratch: &Path) -> BackendStatus {
    let mut found = Vec::new();
    let result = async {
        let tools = Tools::find().map_err(|e| e.to_string())?;
        found.push(format!("programs in {} ({})", tools.bin_dir.display(), tools.version));
        found.push(format!("pg_basebackup: {}", tools.pg_basebackup.display()));
        match RunAs::current().map_err(|e| e.to_string())? {
            Some(_) => found.push("running as root: the servers run as the `postgres` user".into()),
            None => found.push("the servers run as this user".into()),
        }
        try_start(scratch, Backend::Local, &mut found).await
    }
    .await;
    BackendStatus { backend: Backend::Local, works: result.is_ok(), found, why_not: result.err() }
}

async fn check_docker(scratch: &Path) -> BackendStatus {
    let mut found = Vec::new();
    let result = async {
        let version = docker::daemon_answers()?;
        found.push(format!("Docker daemon {version} answers"));
        if !docker::image_present() {
            return Err(format!(
                "the image {} is missing: run `cargo xtask test` (or {} as root) to build it offline",
                docker::image_ref(),
                docker::IMAGE_SCRIPT_PATH
            ));
        }
        found.push(format!("image {} present", docker::image_ref()));
        try_start(scratch, Backend::Docker, &mut found).await
    }
    .await;
    BackendStatus { backend: Backend::Docker, works: result.is_ok(), found, why_not: result.err() }
}

/// The report as text, one backend a paragraph.
pub fn text(d: &Doctor) -> String {
    let mut out = String::new();
    for b in &d.backends {
        let verdict = if b.works { "works" } else { "does not work" };
        out.push_str(&format!("{}: {verdict}\n", b.backend.name()));
        for f in &b.found {
            out.push_str(&format!("  found: {f}\n"));
        }
        if let Some(why) = &b.why_not {
            out.push_str(&format!("  why not: {why}\n"));
        }
    }
    out
}
