//! The HTML report a team puts on the screen at a game day: one
//! self-contained file (inline CSS and SVG, no script, no web font) that
//! prints legibly to PDF. A summary, one card per drill (the claim, the
//! verdict, RTO and RPO bars against the tier's targets, the counts, the
//! timeline and the RTO trend from the history), then the runbook and, for
//! a blind exercise, the responders' timeline and the fault revealed.
//! The markup is maud's; the plots are plotters' ([`super::plots`]).

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::explain::human_s;
use super::plots::{self, TrendPoint};
use super::runbook::{Item, runbook};
use super::{Entry, VERSION, cost_increase_pct};
use crate::drill::DrillResult;
use crate::drill::scenario::Expect;
use crate::gameday::{ACK_TARGET_S, BlindOutcome, ResponderAction, UPDATE_TARGET_S};
use crate::history::{Record, trends};

/// A drill's place in a programme.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrillMeta {
    /// Who owns it.
    pub owner: String,
    /// How often it runs.
    pub cadence: String,
    /// What it confirms.
    pub confirms: String,
}

/// What a report shows beyond the results.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// The heading (default: "Drill report").
    pub title: String,
    /// A line under it (the programme, the cadence).
    pub subtitle: String,
    /// Programme details by drill (scenario) name.
    pub meta: BTreeMap<String, DrillMeta>,
    /// The history, for each drill's RTO trend (this run included).
    pub history: Vec<Record>,
    /// A blind exercise's outcome, revealed at the end.
    pub blind: Option<BlindOutcome>,
}

const CSS: &str = r#"
:root { --ok: #146c32; --bad: #a51414; --caught: #1e5aaa; --ink: #1b1b1b; --muted: #5d5d5d; --line: #dcdcdc; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink); margin: 0 auto; max-width: 1000px; padding: 24px; background: #fff; }
h1 { font-size: 28px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 0; } h3 { font-size: 16px; margin: 16px 0 6px; }
.sub, .meta { color: var(--muted); }
.summary { display: grid; grid-template-columns: repeat(5, 1fr); gap: 10px; margin: 18px 0; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.tile b { display: block; font-size: 26px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; }
.overview td + td { white-space: nowrap; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); font-size: 14px; vertical-align: top; }
.card { border: 1px solid var(--line); border-left: 6px solid var(--ok); border-radius: 8px; padding: 14px 16px; margin: 18px 0; }
.card.fail { border-left-color: var(--bad); } .card.caught { border-left-color: var(--caught); }
.verdict { display: inline-block; font-weight: 700; padding: 1px 8px; border-radius: 4px; color: #fff; background: var(--ok); font-size: 14px; margin-left: 8px; vertical-align: middle; }
.fail .verdict, .verdict.fail { background: var(--bad); } .caught .verdict { background: var(--caught); }
.claim { font-weight: 600; margin: 8px 0; }
.bars { display: flex; flex-wrap: wrap; gap: 8px; }
.counts { display: grid; grid-template-columns: repeat(6, 1fr); gap: 6px; margin: 8px 0; }
.counts div { border: 1px solid var(--line); border-radius: 6px; padding: 4px 8px; }
.counts b { display: block; font-size: 18px; } .counts .nz b { color: var(--bad); }
figure { margin: 10px 0; } figcaption { font-size: 13px; color: var(--muted); }
figure svg { max-width: 100%; height: auto; display: block; }
.violations li { color: var(--bad); }
.key span { margin-right: 12px; white-space: nowrap; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 4px; vertical-align: middle; }
ul.check { list-style: none; padding-left: 0; } ul.check li { margin: 4px 0; }
.tick { font-weight: 700; margin-right: 6px; } .yes { color: var(--ok); } .no { color: var(--muted); }
.reveal { border: 2px dashed var(--bad); border-radius: 8px; padding: 12px 16px; }
@media print {
  body { max-width: none; padding: 0; font-size: 12px; }
  .card, figure, table, .reveal { break-inside: avoid; }
  .runbook, .blind { break-before: page; }
}
"#;

/// Renders the HTML report.
pub fn html(entries: &[Entry], extras: &Extras) -> String {
    let title = if extras.title.is_empty() { "Drill report" } else { extras.title.as_str() };
    let doc: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="generator" content={ "agentdrill " (VERSION) };
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { (title) }
                    p.sub {
                        @if !extras.subtitle.is_empty() { (extras.subtitle) " · " }
                        "agentdrill " (VERSION) " · RTO, RPO and side effects measured from ground truth in a deterministic simulation"
                    }
                }
                "\n" (summary(entries)) "\n"
                section.drills {
                    @for (i, e) in entries.iter().enumerate() { "\n" (card(i, e, extras)) }
                }
                "\n" (runbook_section(entries, extras.blind.as_ref())) "\n"
                @if let Some(b) = &extras.blind { (blind_section(b)) "\n" }
            }
        }
    };
    doc.into_string()
}

fn summary(entries: &[Entry]) -> Markup {
    let n = entries.len();
    let passed = entries.iter().filter(|e| e.result.verdict == "pass").count();
    let caught = entries.iter().filter(|e| e.result.verdict == "pass" && e.result.expect == Expect::Fail).count();
    let rate = if n == 0 { 0.0 } else { passed as f64 * 100.0 / n as f64 };
    html! {
        section.summary {
            div.tile { b { (n) } "drills" }
            div.tile { b style="color: var(--ok)" { (passed - caught) } "passed" }
            div.tile { b style="color: var(--caught)" { (caught) } "caught (anti-pattern drills)" }
            div.tile { b style="color: var(--bad)" { (n - passed) } "failed" }
            div.tile { b { (format!("{rate:.0}%")) } "drill success rate" }
        }
        table.overview {
            thead { tr { th { "drill" } th { "tier" } th { "RTO (target)" } th { "RPO (target)" } th { "dup / lost / stuck" } th { "verdict" } } }
            tbody {
                @for (i, e) in entries.iter().enumerate() {
                    @let d = &e.result;
                    "\n" tr {
                        td { a href={ "#drill-" (i + 1) } { (d.scenario) } }
                        td { (d.tier) }
                        td { (rto_words(d.rto_s)) " (<" (human_s(d.target_rto_s)) ")" }
                        td { (format!("{:.1} s", d.rpo_s)) " (<" (human_s(d.target_rpo_s)) ")" }
                        td { (d.duplicates) " / " (d.lost_effects) " / " (d.stuck_tasks) }
                        td { (e.verdict()) }
                    }
                }
            }
        }
    }
}

fn rto_words(r: Option<f64>) -> String {
    r.map_or_else(|| "never".into(), |v| format!("{v:.1} s"))
}

fn card_class(d: &DrillResult) -> &'static str {
    match (d.verdict, d.expect) {
        ("pass", Expect::Fail) => "card caught",
        ("pass", _) => "card pass",
        _ => "card fail",
    }
}

/// What the tier promises, in one sentence.
fn claim(d: &DrillResult) -> String {
    let zero = if d.invariants.is_empty() {
        String::new()
    } else {
        format!(", with no {}", d.invariants.iter().map(|i| i.counts()).collect::<Vec<_>>().join(", no "))
    };
    format!(
        "Tier {} claims: back in service in under {}, losing under {} of acknowledged data{zero}.",
        d.tier,
        human_s(d.target_rto_s),
        human_s(d.target_rpo_s)
    )
}

fn svg(plot: Result<String, plots::PlotError>) -> Markup {
    match plot {
        Ok(s) => PreEscaped(s),
        Err(e) => html! { p.violations { (e.to_string()) } },
    }
}

fn card(i: usize, e: &Entry, extras: &Extras) -> Markup {
    let d = &e.result;
    let meta = extras.meta.get(&d.scenario);
    let p = &d.rto_parts;
    let counts = [
        ("duplicates", d.duplicates),
        ("lost effects", d.lost_effects),
        ("stuck tasks", d.stuck_tasks),
        ("replanned steps", d.replanned_steps),
        ("stale writes", d.stale_writes),
        ("stale actions", d.counts.stale_actions),
    ];
    html! {
        article class=(card_class(d)) id={ "drill-" (i + 1) } {
            h2 { (d.scenario) span.verdict { (e.verdict()) } }
            p.meta {
                @if let Some(f) = &e.file { (f.display()) " · " }
                "seed " (d.seed)
                @if let Some(h) = &e.hash { " · " (h) }
                @if let Some(m) = meta { " · " (m.cadence) " · owner: " (m.owner) }
            }
            @if !d.purpose.is_empty() { p { (d.purpose) } }
            p.claim { (claim(d)) }
            @if d.expect == Expect::Fail {
                p.meta { "An anti-pattern drill: the stack is built wrong on purpose; the drill passes only when it catches a violation." }
            }
            @if let Some(m) = meta.filter(|m| !m.confirms.is_empty()) { p { "Confirms: " (m.confirms) } }
            div.bars {
                figure.bar { (svg(plots::bar_svg("RTO", d.rto_s, d.target_rto_s))) }
                figure.bar { (svg(plots::bar_svg("RPO", Some(d.rpo_s), d.target_rpo_s))) }
            }
            p.meta {
                "RTO parts: detection " (format!("{:.1}", p.detection_s)) " s · promotion/routing " (format!("{:.1}", p.routing_s))
                " s · scale-up " (format!("{:.1}", p.scale_up_s)) " s · hydration " (format!("{:.1}", p.hydration_s))
                " s · resume " (format!("{:.1}", p.resume_s)) " s. RPO by surface: structured state "
                (format!("{:.1}", d.rpo_surfaces.structured_state_s)) " s · vector memory " (format!("{:.1}", d.rpo_surfaces.vector_memory_s))
                " s · queue " (format!("{:.1}", d.rpo_surfaces.queue_s)) " s."
                @if let Some(pct) = cost_increase_pct(d) { " Cost " (format!("{pct:+.0}%")) " over the fault-free run." }
            }
            div.counts {
                @for (name, n) in counts {
                    div class=(if n > 0 { "nz" } else { "z" }) { b { (n) } (name) }
                }
            }
            @if d.violations.is_empty() {
                p { "Every target was met." }
            } @else {
                ul.violations { @for v in &d.violations { li { (v) } } }
            }
            figure.timeline {
                (svg(plots::timeline_svg(d)))
                figcaption {
                    "Timeline (simulated seconds). Top row: fault onsets. Second row: the stack's recovery steps. One lane per job a fault touched. "
                    "Shaded: from the worst fault's onset to recovery (green within the target, red beyond); dashed red: the RTO target."
                    @if d.lanes_more > 0 { " " (d.lanes_more) " more touched jobs are not drawn." }
                    @if d.lanes.is_empty() { " No job was in flight at a fault." }
                    @if let Some(t) = plots::target_off_chart(d) { " The RTO target (" (format!("{t:.0}")) " s after the onset) lies beyond the plot." }
                    br;
                    span.key {
                        span { span.dot style="background:#6e6e6e" {} "started" }
                        span { span.dot style="background:#aa1414" {} "killed / re-issued" }
                        span { span.dot style="background:#d77800" {} "lease expired / detected" }
                        span { span.dot style="background:#1e5aaa" {} "resumed / failover step" }
                        span { span.dot style="background:#7832a0" {} "reconciled" }
                        span { span.dot style="background:#147832" {} "done / recovered" }
                    }
                }
            }
            (trend(d, extras))
        }
    }
}

fn trend(d: &DrillResult, extras: &Extras) -> Markup {
    let ts = trends(&extras.history, Some(&d.scenario));
    let Some(t) = ts.first().filter(|t| t.runs.len() >= 2) else {
        return html! {};
    };
    let skip = t.runs.len().saturating_sub(crate::history::MAX_SERIES * 2);
    let points: Vec<TrendPoint> =
        t.runs[skip..].iter().map(|r| TrendPoint { label: short_time(&r.time), rto_s: r.rto_s }).collect();
    html! {
        figure.trend {
            (svg(plots::trend_svg(&points, d.target_rto_s)))
            figcaption {
                "RTO over the last " (points.len()) " recorded runs, against the target. MTTR "
                (t.mttr_s.map_or_else(|| "never".to_owned(), |m| format!("{m:.1} s")))
                ", drill success rate " (format!("{:.0}%", t.success_rate_pct)) "."
            }
        }
    }
}

/// `20250131T235959Z` as `01-31 23:59`.
fn short_time(stamp: &str) -> String {
    match (stamp.get(4..6), stamp.get(6..8), stamp.get(9..11), stamp.get(11..13)) {
        (Some(mo), Some(d), Some(h), Some(mi)) => format!("{mo}-{d} {h}:{mi}"),
        _ => stamp.to_owned(),
    }
}

fn checklist(items: &[Item]) -> Markup {
    html! {
        ul.check {
            @for it in items {
                "\n" li {
                    @if it.ticked { span.tick.yes { "☑" } } @else { span.tick.no { "☐" } }
                    b { (it.step) } " — " span.meta { (it.evidence) }
                }
            }
        }
    }
}

fn runbook_section(entries: &[Entry], blind: Option<&BlindOutcome>) -> Markup {
    let rb = runbook(entries, blind);
    html! {
        section.runbook {
            h2 { "Runbook" }
            h3 { "What broke" }
            @if rb.failed.is_empty() {
                p { "No drill failed." }
            }
            @for f in &rb.failed {
                div {
                    b { (f.drill) } ": " (f.broke)
                    ul { @for m in &f.missing { li { "Missing or short: " (m) } } }
                }
            }
            h3 { "P1 incident playbook" }
            (checklist(&rb.p1))
            h3 { "Rollback checklist" }
            (checklist(&rb.rollback))
        }
    }
}

fn action_words(a: ResponderAction) -> &'static str {
    match a {
        ResponderAction::Ack => "acknowledged",
        ResponderAction::Note => "note",
        ResponderAction::Update => "stakeholder update",
        ResponderAction::Resolved => "resolved",
    }
}

fn against(took: Option<f64>, target: Option<f64>) -> String {
    match (took, target) {
        (None, _) => "not done".into(),
        (Some(s), Some(t)) if s <= t => format!("{s:.0} s (target {t:.0} s): on time"),
        (Some(s), Some(t)) => format!("{s:.0} s (target {t:.0} s): late"),
        (Some(s), None) => format!("{s:.0} s"),
    }
}

fn blind_section(b: &BlindOutcome) -> Markup {
    html! {
        section.blind {
            h2 { "Blind exercise" }
            table {
                thead { tr { th { "playbook step" } th { "responders" } } }
                tbody {
                    tr { td { "acknowledge" } td { (against(b.ack_s, Some(ACK_TARGET_S))) } }
                    tr { td { "diagnose (first note)" } td { (against(b.diagnose_s, None)) } }
                    tr { td { "stakeholder update" } td { (against(b.update_s, Some(UPDATE_TARGET_S))) } }
                    tr { td { "recover (resolved)" } td { (against(b.recover_s, None)) } }
                }
            }
            h3 { "What the responders did" }
            table {
                thead { tr { th { "after" } th { "what" } th { "text" } } }
                tbody {
                    @for (s, a, text) in &b.timeline {
                        tr { td { (format!("{s:.0} s")) } td { (action_words(*a)) } td { (text) } }
                    }
                }
            }
            div.reveal {
                h3 { "The fault, revealed" }
                p { "Drill drawn: " b { (b.drill) } }
                ul { @for f in &b.faults { li { (f) } } }
                p.meta { "Set the notes above beside the runbook's steps: which step did the responders need that the runbook did not say, and which step did it say that they did not need?" }
            }
        }
    }
}
