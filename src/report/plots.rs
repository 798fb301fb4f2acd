//! The HTML report's plots, drawn with plotters' SVG backend: a drill's
//! timeline in the manner of Jepsen's (fault onsets, the stack's recovery
//! steps, one lane per job the faults touched, the RTO window against its
//! target), RTO and RPO bars against the tier's targets, and a drill's RTO
//! trend over the history. Each function returns one `<svg>` element.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::components::env::Note;
use crate::components::ids::us_to_s;
use crate::drill::DrillResult;
use crate::drill::lanes::LaneEvent;

/// A plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot could not be drawn: {0}")]
pub struct PlotError(String);

type Plot = Result<String, PlotError>;

fn err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError(e.to_string())
}

/// Width of the timeline and trend plots, pixels (the page scales them).
pub const WIDE_PX: u32 = 920;
const ROW_PX: u32 = 48;
/// Left label area and margins of the timeline, pixels (for placing words).
const TIMELINE_LEFT_PX: u32 = 80;
const TIMELINE_RIGHT_PX: u32 = 24;
/// Where a mark's word goes, relative to the mark: above, below, further below.
const WORD_DY: [i32; 3] = [-19, 6, 19];
/// Roughly how wide a character of the marks' font is, pixels.
const CHAR_PX: f64 = 6.6;
const FONT: &str = "sans-serif";

const GREY: RGBColor = RGBColor(110, 110, 110);
const DARK_RED: RGBColor = RGBColor(170, 20, 20);
const ORANGE: RGBColor = RGBColor(215, 120, 0);
const STEEL: RGBColor = RGBColor(30, 90, 170);
const PURPLE: RGBColor = RGBColor(120, 50, 160);
const DARK_GREEN: RGBColor = RGBColor(20, 120, 50);
const OK_FILL: RGBColor = RGBColor(215, 240, 220);
const BAD_FILL: RGBColor = RGBColor(250, 215, 215);

/// A mark on a timeline row: when, the word, its colour.
struct Mark {
    at_s: f64,
    word: String,
    colour: RGBColor,
}

/// The stack's recovery steps as a timeline shows them (first of each kind,
/// with how often it happened).
fn stack_marks(d: &DrillResult) -> Vec<Mark> {
    let mut marks: Vec<(Mark, u32)> = Vec::new();
    for e in &d.trace {
        let (word, colour) = match e.note {
            Note::FailoverDetected => ("detected", ORANGE),
            Note::FailoverCancelled => ("failover called off", DARK_GREEN),
            Note::Promoted => ("promoted", STEEL),
            Note::DnsSwitched => ("DNS switch", STEEL),
            Note::RoutingEffective => ("routing", STEEL),
            Note::ScaledUp => ("scale-up", STEEL),
            Note::Hydrated { .. } => ("hydrated", STEEL),
            Note::Serving => ("serving", DARK_GREEN),
            Note::BreakerOpened { .. } => ("breaker open", ORANGE),
            Note::CorruptionDetected { .. } => ("corruption found", ORANGE),
            Note::Restored { .. } => ("restored", DARK_GREEN),
            Note::Deployed { .. } => ("deploy", GREY),
            Note::RollbackStarted { .. } => ("rollback", ORANGE),
            Note::RolledBack { .. } => ("rolled back", DARK_GREEN),
            Note::SyncDegraded => ("sync degraded", ORANGE),
            _ => continue,
        };
        match marks.iter_mut().find(|(m, _)| m.word == word) {
            Some((_, n)) => *n += 1,
            None => marks.push((Mark { at_s: us_to_s(e.at_us), word: word.into(), colour }, 1)),
        }
    }
    marks
        .into_iter()
        .map(|(mut m, n)| {
            if n > 1 {
                m.word = format!("{} ×{n}", m.word);
            }
            m
        })
        .collect()
}

fn lane_colour(e: LaneEvent) -> RGBColor {
    match e {
        LaneEvent::Started => GREY,
        LaneEvent::Killed | LaneEvent::Reissued => DARK_RED,
        LaneEvent::LeaseExpired => ORANGE,
        LaneEvent::Resumed => STEEL,
        LaneEvent::Reconciled => PURPLE,
        LaneEvent::Done => DARK_GREEN,
        LaneEvent::Failed => BLACK,
    }
}

/// The worst fault's onset and RTO (None when nothing struck).
fn recovery_window(d: &DrillResult) -> Option<(f64, Option<f64>)> {
    let worst = d.faults.iter().filter(|f| f.onset_s.is_some()).max_by(|a, b| match (a.rto_s, b.rto_s) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, _) => std::cmp::Ordering::Greater,
        (_, None) => std::cmp::Ordering::Less,
        (Some(x), Some(y)) => x.total_cmp(&y),
    })?;
    Some((worst.onset_s?, worst.rto_s))
}

/// The rows of a timeline, top to bottom: faults, the stack, one per job.
struct Rows {
    names: Vec<String>,
    marks: Vec<Vec<Mark>>,
    /// For job rows: where the lane's line starts and ends.
    spans: Vec<Option<(f64, Option<f64>)>>,
}

fn rows(d: &DrillResult) -> Rows {
    let mut names = vec!["faults".to_owned(), "stack".to_owned()];
    let faults: Vec<Mark> = d
        .faults
        .iter()
        .enumerate()
        .filter_map(|(i, f)| Some(Mark { at_s: f.onset_s?, word: format!("F{} {}", i + 1, f.kind), colour: RED }))
        .collect();
    let mut stack = stack_marks(d);
    if let Some((onset, Some(rto))) = recovery_window(d) {
        stack.push(Mark { at_s: onset + rto, word: "recovered".into(), colour: DARK_GREEN });
    }
    let mut marks = vec![faults, stack];
    let mut spans = vec![None, None];
    for lane in &d.lanes {
        names.push(format!("job {}", lane.job));
        let start = lane.events.iter().find(|e| e.1 == LaneEvent::Started).map(|e| e.0);
        let end = lane.events.iter().find(|e| matches!(e.1, LaneEvent::Done | LaneEvent::Failed)).map(|e| e.0);
        spans.push(Some((start.or_else(|| lane.events.first().map(|e| e.0)).unwrap_or(0.0), end)));
        marks.push(
            lane.events.iter().map(|&(at_s, e)| Mark { at_s, word: e.word().into(), colour: lane_colour(e) }).collect(),
        );
    }
    Rows { names, marks, spans }
}

/// The x range: every mark and the recovery window, padded; the target line
/// only when it is not far beyond what happened.
fn x_range(d: &DrillResult, rows: &Rows) -> (f64, f64, Option<f64>) {
    let times = rows.marks.iter().flatten().map(|m| m.at_s);
    let (mut lo, mut hi) = times.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| (lo.min(t), hi.max(t)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, d.simulated_s.max(1.0));
    }
    let target = recovery_window(d).map(|(onset, _)| onset + d.target_rto_s).filter(|t| t.is_finite());
    let target = target.filter(|&t| t <= hi + (hi - lo).max(1.0));
    if let Some(t) = target {
        hi = hi.max(t);
    }
    let pad = ((hi - lo) * 0.04).max(0.5);
    ((lo - pad).max(0.0), hi + pad, target)
}

/// The RTO target, seconds after the onset, when the timeline leaves it
/// out because it lies far beyond what happened.
pub fn target_off_chart(d: &DrillResult) -> Option<f64> {
    let shown = x_range(d, &rows(d)).2;
    (recovery_window(d).is_some() && d.target_rto_s.is_finite() && shown.is_none()).then_some(d.target_rto_s)
}

/// The drill's timeline: one `<svg>`.
pub fn timeline_svg(d: &DrillResult) -> Plot {
    let rows = rows(d);
    let n = rows.names.len() as i32;
    let height = 70 + ROW_PX * n as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDE_PX, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw_timeline(&root, d, &rows, n)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn draw_timeline(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    d: &DrillResult,
    rows: &Rows,
    n: i32,
) -> Result<(), PlotError> {
    let (x0, x1, target) = x_range(d, rows);
    let names = rows.names.clone();
    let label = move |y: &i32| usize::try_from(n - 1 - *y).ok().and_then(|i| names.get(i).cloned()).unwrap_or_default();
    let mut chart = ChartBuilder::on(root)
        .margin(10)
        .margin_right(TIMELINE_RIGHT_PX)
        .x_label_area_size(36)
        .y_label_area_size(TIMELINE_LEFT_PX - 10)
        .build_cartesian_2d(x0..x1, -1i32..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize + 2)
        .y_label_formatter(&label)
        .x_labels(10)
        .x_desc("simulated seconds")
        .label_style((FONT, 13))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(err)?;
    let row_y = |i: usize| n - 1 - i as i32;
    if let Some((onset, rto)) = recovery_window(d) {
        let (end, fill) = match rto {
            Some(r) if r < d.target_rto_s => (onset + r, OK_FILL),
            Some(r) => (onset + r, BAD_FILL),
            None => (x1, BAD_FILL),
        };
        chart.draw_series([Rectangle::new([(onset, -1), (end.min(x1), n)], fill.filled())]).map_err(err)?;
    }
    if let Some(t) = target {
        chart.draw_series(DashedLineSeries::new([(t, -1), (t, n)], 6, 4, DARK_RED.stroke_width(2))).map_err(err)?;
        chart
            .draw_series([EmptyElement::at((t, n))
                + Text::new(
                    format!("RTO target {:.0} s", d.target_rto_s),
                    (-110, 2),
                    (FONT, 12).into_font().color(&DARK_RED),
                )])
            .map_err(err)?;
    }
    for (i, span) in rows.spans.iter().enumerate() {
        if let Some((from, to)) = span {
            let y = row_y(i);
            let style = if to.is_some() { GREY.stroke_width(2) } else { DARK_RED.stroke_width(2) };
            chart.draw_series(LineSeries::new([(*from, y), (to.unwrap_or(x1), y)], style)).map_err(err)?;
        }
    }
    let plot_px = f64::from(WIDE_PX - TIMELINE_LEFT_PX - TIMELINE_RIGHT_PX);
    let px = |t: f64| (t - x0) / (x1 - x0) * plot_px;
    for (i, marks) in rows.marks.iter().enumerate() {
        let y = row_y(i);
        let mut order: Vec<&Mark> = marks.iter().collect();
        order.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        for m in &order {
            chart.draw_series([Circle::new((m.at_s, y), 4, m.colour.filled())]).map_err(err)?;
        }
        // Marks closer than a few pixels share one label; each label takes
        // the first of three lines beside its row where it does not run into
        // the label before it, and turns left at the right edge.
        let mut ends = [f64::NEG_INFINITY; 3];
        for group in clusters(&order, &px) {
            let x = px(group[0].at_s);
            let word = group.iter().map(|m| m.word.as_str()).collect::<Vec<_>>().join(" · ");
            let colour = if group.len() == 1 { group[0].colour } else { RGBColor(40, 40, 40) };
            let width = word.chars().count() as f64 * CHAR_PX;
            let left = x + 6.0 + width > plot_px;
            let (from, to) = if left { (x - width - 6.0, x) } else { (x, x + width + 6.0) };
            let level = (0..3)
                .find(|&l| ends[l] + 4.0 <= from)
                .unwrap_or_else(|| (0..3).min_by(|&a, &b| ends[a].total_cmp(&ends[b])).expect("three lines"));
            ends[level] = to;
            let dx = if left { -(width as i32) - 6 } else { 5 };
            let style = (FONT, 12).into_font().color(&colour);
            chart
                .draw_series([EmptyElement::at((group[0].at_s, y)) + Text::new(word, (dx, WORD_DY[level]), style)])
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Marks (in time order) grouped while each is within a few pixels of
/// its group's first.
fn clusters<'m>(order: &[&'m Mark], px: &dyn Fn(f64) -> f64) -> Vec<Vec<&'m Mark>> {
    const NEAR_PX: f64 = 9.0;
    let mut out: Vec<Vec<&Mark>> = Vec::new();
    for &m in order {
        match out.last_mut() {
            Some(g) if px(m.at_s) - px(g[0].at_s) < NEAR_PX => g.push(m),
            _ => out.push(vec![m]),
        }
    }
    out
}

/// One measurement as a bar against its target: `value` None is "never".
pub fn bar_svg(what: &str, value_s: Option<f64>, target_s: f64) -> Plot {
    let (w, h) = (440u32, 70u32);
    let finite_target = target_s.is_finite().then_some(target_s);
    let top = value_s.unwrap_or(0.0).max(finite_target.unwrap_or(1.0)).max(1.0) * 1.15;
    let met = value_s.is_some_and(|v| v < target_s);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(6)
            .margin_right(16)
            .x_label_area_size(20)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..top, 0i32..2)
            .map_err(err)?;
        let name = what.to_owned();
        let label = move |y: &i32| if *y == 1 { name.clone() } else { String::new() };
        chart
            .configure_mesh()
            .disable_mesh()
            .y_labels(3)
            .y_label_formatter(&label)
            .x_labels(5)
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        let (end, colour) = match value_s {
            Some(v) => (v, if met { DARK_GREEN } else { DARK_RED }),
            None => (top, DARK_RED),
        };
        chart.draw_series([Rectangle::new([(0.0, 0), (end, 2)], colour.mix(0.75).filled())]).map_err(err)?;
        let words = match value_s {
            Some(v) => format!("{v:.1} s"),
            None => "never recovered".into(),
        };
        let at = if end > top * 0.6 { (top * 0.02, 1) } else { (end, 1) };
        chart
            .draw_series([EmptyElement::at(at) + Text::new(words, (4, -7), (FONT, 13).into_font().color(&BLACK))])
            .map_err(err)?;
        if let Some(t) = finite_target {
            chart.draw_series(DashedLineSeries::new([(t, 0), (t, 2)], 4, 3, BLACK.stroke_width(2))).map_err(err)?;
            chart
                .draw_series([EmptyElement::at((t, 0))
                    + Text::new(format!("target {t:.0} s"), (-78, 2), (FONT, 11).into_font().color(&BLACK))])
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One point of a drill's RTO trend: a label (the run's date) and the RTO
/// (None: not recovered).
pub struct TrendPoint {
    /// The run, as the x axis names it.
    pub label: String,
    /// RTO, seconds.
    pub rto_s: Option<f64>,
}

/// A drill's RTO over its runs, with the target line.
pub fn trend_svg(points: &[TrendPoint], target_s: f64) -> Plot {
    assert!(!points.is_empty(), "a trend needs a run");
    let h = 200u32;
    let worst = points.iter().filter_map(|p| p.rto_s).fold(0.0f64, f64::max);
    let finite_target = target_s.is_finite().then_some(target_s).filter(|&t| t <= worst.max(1.0) * 4.0);
    let top = worst.max(finite_target.unwrap_or(0.0)).max(1.0) * 1.2;
    let n = points.len() as i32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDE_PX / 2, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .margin_right(20)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(-1i32..n, 0f64..top)
            .map_err(err)?;
        let labels: Vec<String> = points.iter().map(|p| p.label.clone()).collect();
        let xl = move |x: &i32| usize::try_from(*x).ok().and_then(|i| labels.get(i).cloned()).unwrap_or_default();
        chart
            .configure_mesh()
            .x_labels((n as usize + 2).min(8))
            .x_label_formatter(&xl)
            .y_desc("RTO s")
            .label_style((FONT, 11))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(err)?;
        if let Some(t) = finite_target {
            chart.draw_series(DashedLineSeries::new([(-1, t), (n, t)], 6, 4, DARK_RED.stroke_width(2))).map_err(err)?;
            chart
                .draw_series([EmptyElement::at((-1, t))
                    + Text::new(format!("target {t:.0} s"), (4, -14), (FONT, 11).into_font().color(&DARK_RED))])
                .map_err(err)?;
        }
        let line: Vec<(i32, f64)> = points.iter().enumerate().filter_map(|(i, p)| Some((i as i32, p.rto_s?))).collect();
        chart.draw_series(LineSeries::new(line.clone(), STEEL.stroke_width(2))).map_err(err)?;
        chart.draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 4, STEEL.filled()))).map_err(err)?;
        let never = points.iter().enumerate().filter(|(_, p)| p.rto_s.is_none());
        chart
            .draw_series(never.map(|(i, _)| {
                EmptyElement::at((i as i32, top * 0.95))
                    + Cross::new((0, 0), 5, DARK_RED.stroke_width(2))
                    + Text::new("never", (6, -4), (FONT, 10).into_font().color(&DARK_RED))
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}
