//! `agentdrill gameday` (a programme's drills, or a blind exercise and the
//! responders' `ack`, `note` and `resolved`) and `agentdrill history`. The
//! wall clock is read here for the blind exercise's timeline and the
//! history's times. Exit codes as `run`: 0 every drill passed, 1 one
//! failed, 2 unusable input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use agentdrill::gameday::{self, BLIND_FILE, BlindState, Cadence, Programme, ResponderAction};
use agentdrill::history;
use agentdrill::report::html::{DrillMeta, Extras};
use agentdrill::report::{self, Entry};
use clap::{Args, Subcommand};

use crate::cli::{emit, print_table, write_atomic, write_with_history};

/// `agentdrill gameday`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct GamedayArgs {
    /// What the responders of a blind exercise type.
    #[command(subcommand)]
    action: Option<Responder>,
    /// The programme (gameday.toml).
    #[arg(required = true)]
    program: Option<PathBuf>,
    /// Only the drills of this cadence.
    #[arg(long, value_enum)]
    cadence: Option<Cadence>,
    /// Draw one drill (of the cadence) with a hidden seed, inject it and
    /// start timing the responders; the fault is revealed at `resolved`.
    #[arg(long)]
    blind: bool,
    /// The reports folder: report.html and the rest go into DIR/<UTC time>/,
    /// the history into DIR/history.jsonl, a blind exercise's state into
    /// DIR/blind.json.
    #[arg(long, value_name = "DIR", default_value = "reports")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Responder {
    /// The alert is acknowledged.
    Ack {
        /// The reports folder of the exercise.
        #[arg(long, value_name = "DIR", default_value = "reports")]
        out: PathBuf,
    },
    /// A finding (the first one times the diagnosis); with --update, a
    /// status update sent to stakeholders.
    Note {
        /// The note.
        #[arg(required = true)]
        text: Vec<String>,
        /// This note is the status update to stakeholders.
        #[arg(long)]
        update: bool,
        /// The reports folder of the exercise.
        #[arg(long, value_name = "DIR", default_value = "reports")]
        out: PathBuf,
    },
    /// Service is back: the exercise ends, the fault is revealed and the
    /// report written.
    Resolved {
        /// The reports folder of the exercise.
        #[arg(long, value_name = "DIR", default_value = "reports")]
        out: PathBuf,
    },
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn load_programme(path: &Path) -> Result<Programme, ExitCode> {
    gameday::load(path).map_err(|errors| {
        for e in errors {
            eprintln!("error: {e}");
        }
        ExitCode::from(2)
    })
}

/// `agentdrill gameday …`.
pub fn gameday(args: GamedayArgs) -> ExitCode {
    match args.action {
        Some(Responder::Ack { out }) => respond(&out, ResponderAction::Ack, ""),
        Some(Responder::Note { text, update, out }) => {
            let action = if update { ResponderAction::Update } else { ResponderAction::Note };
            respond(&out, action, &text.join(" "))
        }
        Some(Responder::Resolved { out }) => resolved(&out),
        None => {
            let Some(program) = args.program else {
                eprintln!("error: name the programme: agentdrill gameday gameday.toml");
                return ExitCode::from(2);
            };
            if args.blind {
                blind(&program, args.cadence, &args.out)
            } else {
                programme(&program, args.cadence, &args.out)
            }
        }
    }
}

fn extras(p: &Programme, cadence: Option<Cadence>, history: Vec<history::Record>) -> Extras {
    let meta: BTreeMap<String, DrillMeta> = p
        .drills
        .iter()
        .map(|d| {
            let m =
                DrillMeta { owner: d.owner.clone(), cadence: d.cadence.name().into(), confirms: d.confirms.clone() };
            (d.loaded.scenario.name.clone(), m)
        })
        .collect();
    Extras {
        title: format!("Game day: {}", p.name),
        subtitle: format!("{} · {}", p.file.display(), cadence.map_or("every cadence", Cadence::name)),
        meta,
        history,
        blind: None,
    }
}

fn selected(p: &Programme, cadence: Option<Cadence>) -> Result<Vec<usize>, ExitCode> {
    let idx: Vec<usize> = (0..p.drills.len()).filter(|&i| cadence.is_none_or(|c| p.drills[i].cadence == c)).collect();
    if idx.is_empty() {
        let have: Vec<&str> = p.drills.iter().map(|d| d.cadence.name()).collect();
        eprintln!(
            "error: {}: no {} drills; the programme has: {}",
            p.file.display(),
            cadence.map_or("", Cadence::name),
            have.join(", ")
        );
        return Err(ExitCode::from(2));
    }
    Ok(idx)
}

fn programme(path: &Path, cadence: Option<Cadence>, out: &Path) -> ExitCode {
    let p = match load_programme(path) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let idx = match selected(&p, cadence) {
        Ok(i) => i,
        Err(c) => return c,
    };
    let mut entries: Vec<Entry> = Vec::with_capacity(idx.len());
    for &i in &idx {
        let d = &p.drills[i];
        tracing::info!(drill = %d.loaded.scenario.name, cadence = d.cadence.name(), "running");
        match gameday::run_drill(d, None) {
            Ok(e) => entries.push(e),
            Err(e) => return over_budget(d, &e),
        }
    }
    print_table(&entries);
    finish(out, &entries, "gameday", extras(&p, cadence, Vec::new()))
}

/// Names the drill that went past its budget; exit 2.
fn over_budget(d: &gameday::ProgrammeDrill, e: &agentdrill::drill::OverBudget) -> ExitCode {
    eprintln!("error: {}: {e}", d.scenario.display());
    ExitCode::from(2)
}

/// Writes the reports, appends to the history and gives the exit code.
fn finish(out: &Path, entries: &[Entry], source: &str, extras: Extras) -> ExitCode {
    match write_with_history(out, entries, source, extras) {
        Ok(at) => eprintln!(
            "report written to {}/report.html; history appended to {}",
            at.display(),
            out.join(history::FILE_NAME).display()
        ),
        Err(code) => return code,
    }
    if entries.iter().all(|e| e.result.verdict == "pass") { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn state_path(out: &Path) -> PathBuf {
    out.join(BLIND_FILE)
}

fn read_state(out: &Path) -> Result<BlindState, ExitCode> {
    let path = state_path(out);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        eprintln!(
            "error: {}: {e}: no blind exercise in progress here; start one with `agentdrill gameday PROGRAM --blind --out {}`",
            path.display(),
            out.display()
        );
        ExitCode::from(2)
    })?;
    serde_json::from_str(&text).map_err(|e| {
        eprintln!("error: {}: {e}: the state file is damaged; delete it and start the exercise again", path.display());
        ExitCode::from(2)
    })
}

fn save_state(out: &Path, s: &BlindState) -> Result<(), ExitCode> {
    let text = serde_json::to_string_pretty(s).expect("state serialises");
    write_atomic(out, BLIND_FILE, &text).map_err(|e| {
        eprintln!("error: {}: cannot write: {e}", state_path(out).display());
        ExitCode::from(2)
    })
}

fn blind(path: &Path, cadence: Option<Cadence>, out: &Path) -> ExitCode {
    if state_path(out).exists() {
        eprintln!(
            "error: {}: a blind exercise is in progress; end it with `agentdrill gameday resolved --out {}` first",
            state_path(out).display(),
            out.display()
        );
        return ExitCode::from(2);
    }
    let p = match load_programme(path) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let idx = match selected(&p, cadence) {
        Ok(i) => i,
        Err(c) => return c,
    };
    let state = BlindState::draw(path, &idx, rand::random::<u64>(), now_unix_ms());
    let entry = match gameday::run_drill(&p.drills[state.drill], Some(state.seed)) {
        Ok(e) => e,
        Err(e) => return over_budget(&p.drills[state.drill], &e),
    };
    if let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("error: {}: cannot create: {e}", out.display());
        return ExitCode::from(2);
    }
    if let Err(c) = save_state(out, &state) {
        return c;
    }
    emit(&format!(
        "A fault was injected into one of {} drills of {} (which one, and its seed, stay hidden).\n\n  {}\n\nRespond as you would to a P1 (acknowledge within 2 min, update stakeholders within 15):\n  agentdrill gameday ack --out {o}\n  agentdrill gameday note \"what you found\" --out {o}\n  agentdrill gameday note --update \"status for stakeholders\" --out {o}\n  agentdrill gameday resolved --out {o}\n",
        idx.len(),
        p.name,
        gameday::alert(&entry),
        o = out.display()
    ));
    ExitCode::SUCCESS
}

fn respond(out: &Path, action: ResponderAction, text: &str) -> ExitCode {
    let mut s = match read_state(out) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let now = now_unix_ms();
    if let Err(e) = s.record(action, text, now) {
        eprintln!("error: {}: {e}", state_path(out).display());
        return ExitCode::from(2);
    }
    if let Err(c) = save_state(out, &s) {
        return c;
    }
    let o = s.outcome();
    let after = o.timeline.last().map_or(0.0, |t| t.0);
    let words = match action {
        ResponderAction::Ack => format!("acknowledged after {after:.0} s (target {:.0} s)", gameday::ACK_TARGET_S),
        ResponderAction::Update => {
            format!("stakeholder update after {after:.0} s (target {:.0} s)", gameday::UPDATE_TARGET_S)
        }
        _ => format!("noted after {after:.0} s"),
    };
    emit(&(words + "\n"));
    ExitCode::SUCCESS
}

fn resolved(out: &Path) -> ExitCode {
    let mut s = match read_state(out) {
        Ok(s) => s,
        Err(c) => return c,
    };
    if let Err(e) = s.record(ResponderAction::Resolved, "", now_unix_ms()) {
        eprintln!("error: {}: {e}", state_path(out).display());
        return ExitCode::from(2);
    }
    let p = match load_programme(&s.programme) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let Some(pd) = p.drills.get(s.drill) else {
        eprintln!(
            "error: {}: the drawn drill #{} is no longer in {}; delete the state file",
            state_path(out).display(),
            s.drill,
            s.programme.display()
        );
        return ExitCode::from(2);
    };
    let entry = match gameday::run_drill(pd, Some(s.seed)) {
        Ok(e) => e,
        Err(e) => return over_budget(pd, &e),
    };
    let sc = &pd.loaded.scenario;
    let mut outcome = s.outcome();
    outcome.drill = format!("{} ({}, hidden seed {})", sc.name, pd.scenario.display(), s.seed);
    outcome.faults = sc.faults.iter().map(|f| report::explain::fault_words(sc, f)).collect();
    let mut ex = extras(&p, None, Vec::new());
    ex.title = format!("Blind exercise: {}", p.name);
    ex.blind = Some(outcome.clone());
    let entries = [entry];
    let code = finish(out, &entries, "blind", ex);
    // The exercise is over: its state goes aside so a new one can start.
    let done = out.join(format!("blind-{}.json", crate::cli::utc_stamp(SystemTime::now())));
    if let Err(e) = save_state(out, &s).and_then(|()| {
        std::fs::rename(state_path(out), &done).map_err(|e| {
            eprintln!("error: {}: cannot move aside: {e}", state_path(out).display());
            ExitCode::from(2)
        })
    }) {
        return e;
    }
    emit(&format!(
        "resolved after {:.0} s. The fault was: {}\n  {}\n",
        outcome.recover_s.unwrap_or(0.0),
        outcome.drill,
        outcome.faults.join("\n  ")
    ));
    code
}

/// `agentdrill history [PATH] [--drill NAME]`.
pub fn history(path: &Path, drill: Option<&str>) -> ExitCode {
    let file = history::file_in(path);
    let h = match history::read(&file) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if h.skipped_lines > 0 {
        eprintln!("warning: {}: {} unreadable line(s) skipped (a torn write?)", file.display(), h.skipped_lines);
    }
    let trends = history::trends(&h.records, drill);
    if trends.is_empty() {
        eprintln!(
            "error: {}: no {}records; `agentdrill run --out` and `agentdrill gameday` append them",
            file.display(),
            drill.map_or(String::new(), |d| format!("\"{d}\" "))
        );
        return ExitCode::from(2);
    }
    let mut text = history::render(&trends);
    if drill.is_some() {
        for t in &trends {
            text.push('\n');
            text.push_str(&history::render_runs(t));
            text.push('\n');
        }
    }
    emit(&text);
    ExitCode::SUCCESS
}
