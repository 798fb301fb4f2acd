//! The `local` backend: PostgreSQL programs of this machine, one postmaster
//! per node in its own process group, listening on a free loopback port.
//!
//! Programs are found next to `initdb` (its symlinks resolved), which is
//! looked up on PATH and then in `/usr/lib/postgresql/<version>/bin` (Debian's
//! layout, newest version first). PostgreSQL refuses to run as root: when the
//! harness is root, the programs run as the `postgres` system user (created by
//! Debian's `postgresql-15` package) and the node folder is handed to it.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};

use super::stale::{self, NodeRecord};
use super::{PgError, PgNode, PgOptions, SETTINGS, START_TIMEOUT_MS, STOP_TIMEOUT_MS};

/// Where Debian installs PostgreSQL's programs (one folder per version).
pub const DEBIAN_LIB_DIR: &str = "/usr/lib/postgresql";
/// How many times a start is retried on another port when the port was taken
/// between choosing it and the server binding it.
const MAX_PORT_TRIES: u32 = 3;
/// Pause between two readiness probes.
const PROBE_EVERY_MS: u64 = 50;

/// The PostgreSQL programs this backend runs.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The folder they were found in.
    pub bin_dir: PathBuf,
    /// `initdb`.
    pub initdb: PathBuf,
    /// `postgres` (the server).
    pub postgres: PathBuf,
    /// `pg_basebackup` (a standby's copy of the primary).
    pub pg_basebackup: PathBuf,
    /// `postgres --version`, e.g. `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
}

impl Tools {
    /// Finds the programs (PATH, then [`DEBIAN_LIB_DIR`]); the error lists
    /// every folder searched and names `cargo xtask test`.
    pub fn find() -> Result<Tools, PgError> {
        let dirs = search_dirs();
        let searched = || dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
        let initdb = dirs
            .iter()
            .map(|d| d.join("initdb"))
            .find(|p| is_executable(p))
            .ok_or_else(|| PgError::MissingBinary { program: "initdb", searched: searched() })?;
        let real = std::fs::canonicalize(&initdb).map_err(PgError::io("resolving initdb", &initdb))?;
        let bin_dir = real.parent().expect("a file has a parent folder").to_path_buf();
        // The server and pg_basebackup of initdb's own version first.
        let mut ordered = vec![bin_dir.clone()];
        ordered.extend(dirs.iter().cloned());
        let find = |program: &'static str| {
            ordered
                .iter()
                .map(|d| d.join(program))
                .find(|p| is_executable(p))
                .ok_or_else(|| PgError::MissingBinary { program, searched: searched() })
        };
        let postgres = find("postgres")?;
        let pg_basebackup = find("pg_basebackup")?;
        let out = Command::new(&postgres)
            .arg("--version")
            .output()
            .map_err(PgError::io("running postgres --version", &postgres))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Tools { bin_dir, initdb: real, postgres, pg_basebackup, version })
    }
}

/// PATH's folders, then `/usr/lib/postgresql/<v>/bin`, newest version first.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_LIB_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    dirs.extend(versions.into_iter().map(|(_, d)| d));
    if dirs.iter().all(|d| d != Path::new(DEBIAN_LIB_DIR).join("15/bin").as_path()) {
        dirs.push(Path::new(DEBIAN_LIB_DIR).join("15/bin"));
    }
    dirs
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The user PostgreSQL runs as: `None` = the harness's own user; the
/// `postgres` system user when the harness is root.
#[derive(Clone, Copy, Debug)]
pub struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `None` unless root; root needs the `postgres` user.
    pub fn current() -> Result<Option<RunAs>, PgError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        match User::from_name("postgres") {
            Ok(Some(u)) => Ok(Some(RunAs { uid: u.uid.as_raw(), gid: u.gid.as_raw() })),
            _ => Err(PgError::Invalid(
                "PostgreSQL refuses to run as root and there is no `postgres` user to run it as: install PostgreSQL 15 with `cargo xtask test` (Debian's postgresql-15 creates the user), or run agentdrill as another user".into(),
            )),
        }
    }

    fn apply(run_as: Option<RunAs>, cmd: &mut Command) {
        if let Some(r) = run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
    }

    /// Hands `path` to the user (a no-op when not root).
    pub fn chown(run_as: Option<RunAs>, path: &Path) -> Result<(), PgError> {
        if let Some(r) = run_as {
            nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(r.uid)), Some(nix::unistd::Gid::from_raw(r.gid)))
                .map_err(|e| PgError::Io {
                    what: "handing the node folder to the postgres user",
                    path: path.into(),
                    source: e.into(),
                })?;
        }
        Ok(())
    }
}

/// Runs a program to completion as `run_as`; its output goes into the error.
pub(crate) fn run_tool(run_as: Option<RunAs>, cmd: &mut Command) -> Result<(), PgError> {
    RunAs::apply(run_as, cmd);
    let out = cmd.stdin(Stdio::null()).output().map_err(|source| PgError::Io {
        what: "starting a PostgreSQL program",
        path: cmd.get_program().into(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = output.lines().collect();
    Err(PgError::Command {
        command: format!("{cmd:?}"),
        status: out.status.to_string(),
        output: lines[lines.len().saturating_sub(30)..].join("\n"),
    })
}

/// Creates `<node_dir>` afresh (removing an old one), owned by `run_as`.
pub(crate) fn fresh_node_dir(opts: &PgOptions, run_as: Option<RunAs>) -> Result<PathBuf, PgError> {
    let dir = opts.node_dir();
    if dir.exists() {
        // A leftover of the same name: kill what its record names first.
        stale::cleanup_node(&dir, true)?;
    }
    std::fs::create_dir_all(&dir).map_err(PgError::io("creating the node folder", &dir))?;
    RunAs::chown(run_as, &dir)?;
    Ok(dir)
}

/// `initdb` into `<node_dir>/data` and [`SETTINGS`] appended to its
/// `postgresql.conf`.
fn initdb(tools: &Tools, run_as: Option<RunAs>, data: &Path) -> Result<(), PgError> {
    run_tool(
        run_as,
        Command::new(&tools.initdb).arg("-D").arg(data).args([
            "-U",
            super::USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]),
    )?;
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).map_err(PgError::io("reading postgresql.conf", &conf))?;
    text.push_str("\n# agentdrill (src/live/pg/mod.rs SETTINGS)\n");
    for (k, v) in SETTINGS {
        text.push_str(&format!("{k} = {v}\n"));
    }
    std::fs::write(&conf, text).map_err(PgError::io("writing postgresql.conf", &conf))
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> Result<u16, PgError> {
    crate::live::free_loopback_port().map_err(|source| PgError::Io {
        what: "finding a free loopback port",
        path: "127.0.0.1".into(),
        source,
    })
}

/// Starts a primary on a fresh data folder.
pub(crate) async fn start_primary(opts: &PgOptions) -> Result<PgNode, PgError> {
    let tools = Tools::find()?;
    let run_as = RunAs::current()?;
    let node_dir = fresh_node_dir(opts, run_as)?;
    let data = node_dir.join("data");
    let t = tools.clone();
    let d = data.clone();
    tokio::task::spawn_blocking(move || initdb(&t, run_as, &d))
        .await
        .map_err(|e| PgError::Invalid(format!("the initdb task failed: {e}")))??;
    start_on(opts, &tools, run_as, node_dir).await
}

/// Starts the server of an existing data folder in `node_dir` on a free
/// port (retried on another one if it was taken meanwhile) and waits until
/// it accepts connections.
pub(crate) async fn start_on(
    opts: &PgOptions,
    tools: &Tools,
    run_as: Option<RunAs>,
    node_dir: PathBuf,
) -> Result<PgNode, PgError> {
    let mut last = None;
    for _ in 0..MAX_PORT_TRIES {
        let port = free_port()?;
        let mut proc = LocalProc::spawn(opts, tools, run_as, &node_dir, port)?;
        match proc.wait_ready(&opts.name, port).await {
            Ok(()) => {
                return Ok(PgNode {
                    name: opts.name.clone(),
                    region: opts.region.clone(),
                    node_dir,
                    port,
                    fenced: false,
                    backend: super::Backend::Local,
                    inner: super::Proc::Local(proc),
                });
            }
            Err(e) => {
                proc.kill()?;
                let log = super::tail(&node_dir.join("postgres.log"), 5);
                if !log.contains("could not bind") && !log.contains("already in use") {
                    return Err(e);
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("MAX_PORT_TRIES > 0"))
}

/// A postmaster this harness started (the leader of its process group).
#[derive(Debug)]
pub struct LocalProc {
    child: Option<Child>,
    pid: i32,
    log: PathBuf,
}

impl LocalProc {
    fn spawn(
        opts: &PgOptions,
        tools: &Tools,
        run_as: Option<RunAs>,
        node_dir: &Path,
        port: u16,
    ) -> Result<LocalProc, PgError> {
        let log = node_dir.join("postgres.log");
        let file =
            File::options().create(true).append(true).open(&log).map_err(PgError::io("opening the log", &log))?;
        let err = file.try_clone().map_err(PgError::io("opening the log", &log))?;
        let data = node_dir.join("data");
        let mut cmd = Command::new(&tools.postgres);
        cmd.arg("-D")
            .arg(&data)
            .arg("-c")
            .arg(format!("port={port}"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            // Its own group: a kill reaches every server process at once.
            .process_group(0);
        RunAs::apply(run_as, &mut cmd);
        let child = cmd.spawn().map_err(PgError::io("starting postgres", &tools.postgres))?;
        let pid = i32::try_from(child.id()).expect("pids fit in i32");
        stale::write_record(
            node_dir,
            &NodeRecord {
                harness_pid: std::process::id(),
                harness_start: stale::proc_start_ticks(std::process::id()).unwrap_or(0),
                postmaster_pid: Some(child.id()),
                data_dir: data,
                port,
                container_id: None,
                run_id: opts.run_id.clone(),
            },
        )?;
        Ok(LocalProc { child: Some(child), pid, log })
    }

    async fn wait_ready(&mut self, name: &str, port: u16) -> Result<(), PgError> {
        let url = super::url_for(([127, 0, 0, 1], port).into());
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_exited() {
                return Err(self.start_error(name, format!("exited during start-up ({status})")));
            }
            let probe = tokio::time::timeout(Duration::from_secs(2), super::connect_url(name, &url)).await;
            if let Ok(Ok(client)) = probe
                && client.simple_query("SELECT 1").await.is_ok()
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_millis(START_TIMEOUT_MS) {
                return Err(self.start_error(
                    name,
                    format!("did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT_MS} ms"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(PROBE_EVERY_MS)).await;
        }
    }

    fn start_error(&self, name: &str, what: String) -> PgError {
        PgError::Start { node: name.into(), what, log: self.log.clone(), tail: super::tail(&self.log, 15) }
    }

    /// The exit status if the postmaster has exited (reaped).
    fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(s)) => {
                self.child = None;
                Some(s)
            }
            _ => None,
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.try_exited();
        self.child.is_some()
    }

    /// SIGKILL to every server process ([`stale::kill_server`]), then the
    /// postmaster reaped.
    pub(crate) fn kill(&mut self) -> Result<(), PgError> {
        // Only while the postmaster is not reaped: its pid cannot have been
        // reused. (After it exited by itself, its children exit on their
        // own when they notice.)
        if let Some(mut child) = self.child.take() {
            stale::kill_server(self.pid as u32).map_err(|e| PgError::Io {
                what: "killing the server's processes",
                path: self.log.clone(),
                source: e.into(),
            })?;
            child.wait().map_err(PgError::io("reaping postgres", &self.log))?;
        }
        Ok(())
    }

    /// Fast shutdown (SIGINT), SIGKILL after [`STOP_TIMEOUT_MS`].
    pub(crate) async fn stop(&mut self) -> Result<(), PgError> {
        if !self.is_running() {
            return self.kill();
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGINT);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(STOP_TIMEOUT_MS) {
            if self.try_exited().is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(PROBE_EVERY_MS)).await;
        }
        self.kill()
    }
}
