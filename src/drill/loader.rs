//! Reads scenario files the way a person needs them read: every error of a
//! file at once, each with `file:line:col`, the field path
//! (`faults[2].at.phase`), what was expected and, where it can tell, the fix.
//!
//! How:
//! 1. Every file (the scenario and what it `include`s, recursively, relative
//!    to the including file, cycles refused) is parsed into a spanned TOML
//!    tree. All files live in one buffer, so a span names its file.
//! 2. The trees are merged: the included files are the base, the including
//!    file's own keys win. Tables merge key by key; arrays, values and
//!    tables that name a variant (`replication = { mode = … }`) replace.
//! 3. The merged tree is deserialised with `serde_path_to_error`, one fault
//!    at a time and then the rest. On an error the offending key is taken
//!    out and deserialisation goes on, so every error is reported, not only
//!    the first. Errors inside buffered parts (a fault's fields are read
//!    through serde's internally tagged enum, which drops positions) are
//!    placed by finding the value or key the message names.
//! 4. The cross-field rules ([`crate::drill::scenario::problems`]) run on the result
//!    and their fields are placed through the same tree.
//!
//! Nothing here panics on any input, and a scenario with any error is never
//! returned.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::drill::limits;
use crate::drill::scenario::{FaultSpec, Scenario, ScenarioError};

/// A scenario read from disk (or text) with what it was made of.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The scenario, validated.
    pub scenario: Scenario,
    /// FNV-1a (64-bit) of the bytes of the file and of every file it
    /// includes, in load order: `"fnv1a64:<16 hex digits>"`.
    pub hash: String,
    /// The file first, then every included file in load order.
    pub files: Vec<PathBuf>,
}

/// Reads and validates a scenario file, following its includes. A path
/// that is not a regular file (a directory, a device such as `/dev/zero`, a
/// FIFO, a socket) or is larger than [`limits::MAX_FILE_BYTES`] is refused
/// before anything is read.
pub fn load(path: &Path) -> Result<Loaded, ScenarioError> {
    let text = read_scenario_text(path)?;
    parse(path, &text)
}

/// Reads a scenario file's text with the guards of [`load`] (a regular
/// file, at most [`limits::MAX_FILE_BYTES`], UTF-8): every scenario reader,
/// simulated or live, reads through here.
pub fn read_scenario_text(path: &Path) -> Result<String, ScenarioError> {
    read_text(path).map_err(|e| match e {
        ReadError::NotUtf8(e) => ScenarioError::Parse {
            path: path.to_owned(),
            line: 1,
            col: 1,
            message: format!("the file is not UTF-8 text ({e})"),
        },
        other => ScenarioError::Io { path: path.to_owned(), source: other.into_io() },
    })
}

/// Why a file could not be read as scenario text.
#[derive(Debug)]
enum ReadError {
    /// The operating system refused.
    Io(std::io::Error),
    /// Not a regular file: what it is.
    NotRegular(&'static str),
    /// Larger than the limit: its size in bytes.
    TooLarge(u64),
    /// Not UTF-8.
    NotUtf8(std::string::FromUtf8Error),
}

impl ReadError {
    fn into_io(self) -> std::io::Error {
        match self {
            ReadError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(what) => {
                write!(f, "it is {what}, not a regular file; give the path of a scenario file (.toml)")
            }
            ReadError::TooLarge(n) => write!(
                f,
                "it is {n} bytes, above the limit of {} bytes (1 MiB, MAX_FILE_BYTES); split it with `include`",
                limits::MAX_FILE_BYTES
            ),
            ReadError::NotUtf8(e) => write!(f, "it is not UTF-8 text ({e})"),
        }
    }
}

/// What a non-regular file is, in words.
fn file_kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() { "a directory" } else { "not a regular file" }
}

/// Reads a scenario or included file: only a regular file, only up to
/// [`limits::MAX_FILE_BYTES`] (checked before reading, and again while
/// reading in case it grows), only UTF-8.
fn read_text(path: &Path) -> Result<String, ReadError> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular(file_kind(meta.file_type())));
    }
    if meta.len() > limits::MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    // Opened after the check: the file may have been swapped for another
    // kind or grown since, so the read itself is bounded too.
    let opened = file.metadata().map_err(ReadError::Io)?;
    if !opened.file_type().is_file() {
        return Err(ReadError::NotRegular(file_kind(opened.file_type())));
    }
    let mut bytes = Vec::new();
    file.take(limits::MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > limits::MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(ReadError::NotUtf8)
}

/// Parses and validates a scenario from text. `path` names it in errors,
/// gives the default name, and anchors relative includes.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ScenarioError> {
    let mut src = Sources::default();
    let mut errs = Vec::new();
    let mut chain = Vec::new();
    gather(&mut src, path, text, None, &mut chain, &mut errs);
    if !errs.is_empty() {
        return Err(src.finish(errs));
    }
    let hash = src.hash();
    let files: Vec<PathBuf> = src.files.iter().map(|f| f.path.clone()).collect();
    match build(&src, path) {
        Ok(scenario) => Ok(Loaded { scenario, hash, files }),
        Err(errs) => Err(src.finish(errs)),
    }
}

/// One problem, before it is placed in a file.
#[derive(Clone, Debug)]
struct Diag {
    /// Offset into the sources buffer, when known.
    at: Option<usize>,
    /// Field path, e.g. `faults[2].at.phase` (empty for syntax errors).
    field: String,
    message: String,
}

/// One file in the buffer.
#[derive(Clone, Debug)]
struct File {
    path: PathBuf,
    start: usize,
    end: usize,
    includes: Vec<usize>,
    included_by: Option<usize>,
}

/// Every file of one scenario, in one buffer so that a span names its file.
#[derive(Default)]
struct Sources {
    text: String,
    files: Vec<File>,
}

impl Sources {
    fn add(&mut self, path: &Path, text: &str, included_by: Option<usize>) -> usize {
        let start = self.text.len();
        self.text.push_str(text);
        let end = self.text.len();
        // Keep files apart so that an end-of-file span stays in its file.
        self.text.push('\n');
        self.files.push(File { path: path.to_owned(), start, end, includes: Vec::new(), included_by });
        self.files.len() - 1
    }

    fn file_of(&self, offset: usize) -> usize {
        self.files.iter().rposition(|f| f.start <= offset).unwrap_or(0)
    }

    fn hash(&self) -> String {
        let mut h = Fnv1a::default();
        for f in &self.files {
            h.write(self.text.get(f.start..f.end).unwrap_or("").as_bytes());
            h.write(&[0xff]);
        }
        format!("fnv1a64:{:016x}", h.0)
    }

    /// Places the problems in their files and wraps them up, in file order,
    /// the same error once, at most [`limits::MAX_LISTED_ERRORS`] of them
    /// and then how many more.
    fn finish(&self, mut errs: Vec<Diag>) -> ScenarioError {
        errs.sort_by_key(|d| d.at.unwrap_or(usize::MAX));
        let mut seen = std::collections::HashSet::new();
        errs.retain(|d| seen.insert((d.at, d.field.clone(), d.message.clone())));
        let mut out: Vec<ScenarioError> = Vec::new();
        let mut listed = std::collections::HashSet::new();
        let mut placed = 0;
        for d in errs.iter() {
            if out.len() == limits::MAX_LISTED_ERRORS {
                break;
            }
            placed += 1;
            let e = self.place(d);
            if listed.insert(e.to_string()) {
                out.push(e);
            }
        }
        let more = errs.len() - placed;
        if more > 0 {
            out.push(ScenarioError::More { path: self.files[0].path.clone(), count: more });
        }
        if out.len() == 1 { out.pop().expect("one error") } else { ScenarioError::Several(out) }
    }

    /// One problem placed at `file:line:col` (or at its file when it has no
    /// position).
    fn place(&self, d: &Diag) -> ScenarioError {
        match d.at {
            Some(at) => {
                let fi = self.file_of(at);
                let f = &self.files[fi];
                let text = self.text.get(f.start..f.end).unwrap_or("");
                let (line, col) = line_col(text, at.saturating_sub(f.start));
                let mut message =
                    if d.field.is_empty() { d.message.clone() } else { format!("{}: {}", d.field, d.message) };
                if let Some(by) = f.included_by {
                    message = format!("{message} (included by {})", self.files[by].path.display());
                }
                ScenarioError::Parse { path: f.path.clone(), line, col, message }
            }
            None => ScenarioError::Invalid {
                path: self.files[0].path.clone(),
                field: d.field.clone(),
                message: d.message.clone(),
            },
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut off = offset.min(text.len());
    while !text.is_char_boundary(off) {
        off -= 1;
    }
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// FNV-1a, 64 bits: a stable content hash with no dependency.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(pub u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

// ---------------------------------------------------------------------------
// Phase 1: read every file, follow includes.

fn gather(
    src: &mut Sources,
    path: &Path,
    text: &str,
    included_by: Option<usize>,
    chain: &mut Vec<PathBuf>,
    errs: &mut Vec<Diag>,
) -> usize {
    let me = src.add(path, text, included_by);
    let start = src.files[me].start;
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            errs.push(Diag {
                at: Some(start + e.span().map_or(0, |s| s.start)),
                field: String::new(),
                message: tidy(e.message()),
            });
        }
        return me;
    }
    let root = root.into_inner();
    let Some(inc) = root.get("include") else { return me };
    let mut wanted: Vec<(String, usize)> = Vec::new();
    let shape = "`include` takes a path (\"../stacks/warm.toml\") or a list of paths";
    match inc.get_ref() {
        DeValue::String(s) => wanted.push((s.to_string(), inc.span().start)),
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                match v.get_ref() {
                    DeValue::String(s) => wanted.push((s.to_string(), v.span().start)),
                    _ => errs.push(Diag {
                        at: Some(start + v.span().start),
                        field: format!("include[{i}]"),
                        message: format!("expected a path; {shape}"),
                    }),
                }
            }
        }
        _ => errs.push(Diag { at: Some(start + inc.span().start), field: "include".into(), message: shape.into() }),
    }
    let me_canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    chain.push(me_canon);
    for (rel, at) in wanted {
        let target = path.parent().unwrap_or(Path::new("")).join(&rel);
        let canon = std::fs::canonicalize(&target).unwrap_or_else(|_| target.clone());
        if let Some(pos) = chain.iter().position(|c| *c == canon) {
            let mut names: Vec<String> = chain[pos..].iter().map(|p| short_name(p)).collect();
            names.push(short_name(&canon));
            errs.push(Diag {
                at: Some(start + at),
                field: "include".into(),
                message: format!("include cycle: {}; remove one of these includes", names.join(" includes ")),
            });
            continue;
        }
        if chain.len() > 32 {
            errs.push(Diag {
                at: Some(start + at),
                field: "include".into(),
                message: "includes nest more than 32 deep".into(),
            });
            continue;
        }
        match read_text(&target) {
            Ok(t) => {
                let child = gather(src, &target, &t, Some(me), chain, errs);
                src.files[me].includes.push(child);
            }
            Err(ReadError::NotUtf8(_)) => errs.push(Diag {
                at: Some(start + at),
                field: "include".into(),
                message: format!("{} is not UTF-8 text", target.display()),
            }),
            Err(ReadError::Io(e)) => errs.push(Diag {
                at: Some(start + at),
                field: "include".into(),
                message: format!(
                    "cannot read {:?} ({}): {e}; an include path is relative to the including file",
                    rel,
                    target.display()
                ),
            }),
            Err(e) => errs.push(Diag {
                at: Some(start + at),
                field: "include".into(),
                message: format!("cannot include {:?} ({}): {e}", rel, target.display()),
            }),
        }
    }
    chain.pop();
    me
}

fn short_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

// ---------------------------------------------------------------------------
// Phase 2: parse each file in place, merge, deserialise.

type Val<'a> = Spanned<DeValue<'a>>;

fn shift_value<'a>(v: Val<'a>, by: usize) -> Val<'a> {
    let span = v.span();
    let inner = match v.into_inner() {
        DeValue::Table(t) => DeValue::Table(shift_table(t, by)),
        DeValue::Array(mut a) => {
            for item in a.iter_mut() {
                let taken = std::mem::replace(item, Spanned::new(0..0, DeValue::Boolean(false)));
                *item = shift_value(taken, by);
            }
            DeValue::Array(a)
        }
        other => other,
    };
    Spanned::new(span.start + by..span.end + by, inner)
}

fn shift_table<'a>(t: DeTable<'a>, by: usize) -> DeTable<'a> {
    let mut out = DeTable::new();
    for (k, v) in t {
        let ks = k.span();
        out.insert(Spanned::new(ks.start + by..ks.end + by, k.into_inner()), shift_value(v, by));
    }
    out
}

/// Tables that name a variant replace rather than merge.
fn names_a_variant(t: &DeTable<'_>) -> bool {
    t.contains_key("mode") || t.contains_key("kind")
}

fn merge<'a>(base: &mut DeTable<'a>, over: DeTable<'a>) {
    for (k, v) in over {
        let key = k.get_ref().to_string();
        let both_tables = matches!(v.get_ref(), DeValue::Table(o) if !names_a_variant(o))
            && base
                .get(key.as_str())
                .is_some_and(|b| matches!(b.get_ref(), DeValue::Table(bt) if !names_a_variant(bt)));
        if both_tables {
            let span = v.span();
            if let (Some(b), DeValue::Table(o)) = (base.get_mut(key.as_str()), v.into_inner())
                && let DeValue::Table(bt) = b.get_mut()
            {
                let mut taken = std::mem::take(bt);
                merge(&mut taken, o);
                // The merged table is placed where the including file wrote it.
                *b = Spanned::new(span, DeValue::Table(taken));
            }
        } else {
            base.remove(key.as_str());
            base.insert(k, v);
        }
    }
}

/// The merged tree of file `i`: its includes in order, then its own keys.
fn tree<'a>(src: &'a Sources, i: usize) -> Spanned<DeTable<'a>> {
    let f = &src.files[i];
    let text = src.text.get(f.start..f.end).unwrap_or("");
    // Already parsed once without errors in phase 1.
    let own = DeTable::parse(text).unwrap_or_else(|_| Spanned::new(0..0, DeTable::new()));
    let span = own.span();
    let mut own = shift_table(own.into_inner(), f.start);
    own.remove("include");
    let mut base = DeTable::new();
    for &c in &f.includes {
        merge(&mut base, tree(src, c).into_inner());
    }
    merge(&mut base, own);
    Spanned::new(span.start + f.start..span.end + f.start, base)
}

/// A step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn segs(p: &serde_path_to_error::Path) -> Vec<Seg> {
    p.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

fn node<'v, 'a>(v: &'v Val<'a>, path: &[Seg]) -> Option<&'v Val<'a>> {
    let Some((first, rest)) = path.split_first() else { return Some(v) };
    let child = match (v.get_ref(), first) {
        (DeValue::Table(t), Seg::Key(k)) => t.get(k.as_str())?,
        (DeValue::Array(a), Seg::Index(i)) => a.get(*i)?,
        _ => return None,
    };
    node(child, rest)
}

/// The node at `path`, to change it.
fn node_mut<'v, 'a>(v: &'v mut Val<'a>, path: &[Seg]) -> Option<&'v mut Val<'a>> {
    let Some((first, rest)) = path.split_first() else { return Some(v) };
    let child = match (v.get_mut(), first) {
        (DeValue::Table(t), Seg::Key(k)) => t.get_mut(k.as_str())?,
        (DeValue::Array(a), Seg::Index(i)) => a.get_mut(*i)?,
        _ => return None,
    };
    node_mut(child, rest)
}

/// The first backticked or double-quoted word of a message.
fn token(msg: &str) -> Option<String> {
    let b = msg.find('`');
    let q = msg.find('"');
    let (open, close) = match (b, q) {
        (Some(b), Some(q)) if q < b => (q, '"'),
        (Some(b), _) => (b, '`'),
        (None, Some(q)) => (q, '"'),
        (None, None) => return None,
    };
    let rest = &msg[open + 1..];
    rest.find(close).map(|end| rest[..end].to_owned())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Key,
    Value,
    Either,
}

/// Searches a subtree for a key or scalar matching `tok`; returns the
/// relative path and span of every match.
fn find(v: &Val<'_>, tok: &str, want: Want, path: &mut Vec<Seg>, out: &mut Vec<(Vec<Seg>, Range<usize>)>) {
    match v.get_ref() {
        DeValue::Table(t) => {
            for (k, child) in t {
                path.push(Seg::Key(k.get_ref().to_string()));
                if want != Want::Value && k.get_ref() == tok {
                    out.push((path.clone(), k.span()));
                }
                find(child, tok, want, path, out);
                path.pop();
            }
        }
        DeValue::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                find(child, tok, want, path, out);
                path.pop();
            }
        }
        scalar if want != Want::Key => {
            let text: Cow<'_, str> = match scalar {
                DeValue::String(s) => Cow::Borrowed(s.as_ref()),
                DeValue::Integer(i) if i.radix() == 10 => Cow::Borrowed(i.as_str()),
                DeValue::Float(f) => Cow::Borrowed(f.as_str()),
                DeValue::Boolean(b) => Cow::Owned(b.to_string()),
                _ => Cow::Borrowed(""),
            };
            if text == tok {
                out.push((path.clone(), v.span()));
            }
        }
        _ => {}
    }
}

/// Places an error inside the node at `path` when its position was lost.
fn refine(root: &Val<'_>, mut path: Vec<Seg>, span: Option<Range<usize>>, msg: &str) -> (Vec<Seg>, Option<usize>) {
    let here = node(root, &path);
    let fallback = span.clone().map(|s| s.start).or_else(|| here.map(|n| n.span().start));
    let Some(here) = here else { return (path, fallback) };
    if !matches!(here.get_ref(), DeValue::Table(_) | DeValue::Array(_)) || msg.starts_with("missing field") {
        return (path, fallback);
    }
    let Some(tok) = token(msg) else { return (path, fallback) };
    let want = if msg.starts_with("unknown field") {
        Want::Key
    } else if msg.starts_with("unknown variant") {
        Want::Either
    } else {
        Want::Value
    };
    let mut found = Vec::new();
    find(here, &tok, want, &mut Vec::new(), &mut found);
    // Prefer the match the parser pointed at, else the first in the file.
    let pick = found
        .iter()
        .find(|(_, s)| span.as_ref().is_some_and(|e| s.start <= e.start && e.start < s.end.max(s.start + 1)))
        .or_else(|| found.iter().min_by_key(|(_, s)| s.start));
    match pick {
        Some((rel, s)) => {
            path.extend(rel.iter().cloned());
            (path, Some(s.start))
        }
        None => (path, fallback),
    }
}

/// Removes the key at `path` (or, for an array element, the whole array).
/// Returns the path removed.
fn remove_at(root: &mut Val<'_>, path: &[Seg]) -> Option<Vec<Seg>> {
    let mut p = path.to_vec();
    while matches!(p.last(), Some(Seg::Index(_))) {
        p.pop();
    }
    let Some(Seg::Key(last)) = p.last().cloned() else { return None };
    let parent = &p[..p.len() - 1];
    let mut cur = root;
    for seg in parent {
        cur = match (cur.get_mut(), seg) {
            (DeValue::Table(t), Seg::Key(k)) => t.get_mut(k.as_str())?,
            (DeValue::Array(a), Seg::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    match cur.get_mut() {
        DeValue::Table(t) => t.remove(last.as_str()).map(|_| p),
        _ => None,
    }
}

/// What [`recovering`] got: the value, once every offending key was taken
/// out (or stood in for), and the paths it took out or stood in for.
struct Recovered<T> {
    value: Option<T>,
    clean: bool,
    touched: Vec<String>,
}

/// Deserialises `T`, taking out each offending key and going on, so that
/// every error is found. `fill` supplies a stand-in for a missing required
/// top-level field (so that the rest can still be checked).
fn recovering<T: DeserializeOwned>(
    mut v: Val<'_>,
    prefix: &[Seg],
    fill: &dyn Fn(&str) -> Option<&'static str>,
    errs: &mut Vec<Diag>,
) -> Recovered<T> {
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    let before = errs.len();
    let full = |p: &[Seg]| {
        let mut f = prefix.to_vec();
        f.extend(p.iter().cloned());
        render(&f)
    };
    let mut value = None;
    let mut rounds = 0;
    loop {
        rounds += 1;
        if rounds > MAX_RECOVERY_ROUNDS {
            errs.push(Diag {
                at: None,
                field: full(&[]),
                message: format!(
                    "stopped looking after {MAX_RECOVERY_ROUNDS} rounds of errors; fix the ones listed and run again"
                ),
            });
            break;
        }
        let de = toml::de::ValueDeserializer::from(v.clone());
        let e = match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(t) => {
                value = Some(t);
                break;
            }
            Err(e) => e,
        };
        let rel = segs(e.path());
        let inner = e.into_inner();
        let raw = inner.message().trim().to_owned();
        let (path, at) = refine(&v, rel, inner.span(), &raw);
        let missing = raw.strip_prefix("missing field `").and_then(|r| r.split('`').next()).map(str::to_owned);
        let consequence = missing
            .as_ref()
            .is_some_and(|m| removed.iter().any(|r| r.starts_with(&path) && r.last() == Some(&Seg::Key(m.clone()))));
        if !consequence {
            let (field, at) = match &missing {
                // Name the missing field; place it at its table, or nowhere
                // for the top level (the file's first line says nothing).
                Some(m) => {
                    let mut p = path.clone();
                    p.push(Seg::Key(m.clone()));
                    (full(&p), if path.is_empty() && prefix.is_empty() { None } else { at })
                }
                None => (full(&path), at),
            };
            errs.push(Diag { at, field, message: explain(&raw, missing.as_deref()) });
            if raw.starts_with("unknown field") {
                // serde names the first unknown key of a table; take out the
                // table's other unknown keys in the same round, so that a
                // file of many unknown keys costs one pass, not one per key.
                let extras = other_unknown_keys(&v, &path, &raw);
                let names: std::collections::HashSet<String> = extras
                    .iter()
                    .filter_map(|(p, _)| match p.last() {
                        Some(Seg::Key(k)) => Some(k.clone()),
                        _ => None,
                    })
                    .collect();
                if let Some(parent) = path.split_last().map(|(_, p)| p)
                    && let Some(DeValue::Table(t)) = node_mut(&mut v, parent).map(Spanned::get_mut)
                {
                    // One pass: removing keys one by one from an ordered
                    // table shifts the rest each time.
                    let all = std::mem::take(t);
                    for (k, val) in all {
                        if !names.contains(k.get_ref().as_ref()) {
                            t.insert(k, val);
                        }
                    }
                }
                for (extra, diag) in extras {
                    errs.push(Diag { field: full(&extra), ..diag });
                    removed.push(extra);
                }
            }
        }
        if let Some(m) = &missing
            && path.is_empty()
        {
            // A required top-level field: stand in for it and go on.
            let Some(stand_in) = fill(m) else { break };
            let DeValue::Table(t) = v.get_mut() else { break };
            t.insert(Spanned::new(0..0, Cow::Owned(m.clone())), Spanned::new(0..0, DeValue::String(stand_in.into())));
            removed.push(vec![Seg::Key(m.clone())]);
            continue;
        }
        match remove_at(&mut v, &path) {
            Some(p) => removed.push(p),
            None => break,
        }
    }
    Recovered { value, clean: errs.len() == before, touched: removed.iter().map(|p| full(p)).collect() }
}

/// The most rounds [`recovering`] makes (each takes out at least one
/// offending key; a table's unknown keys go in one round).
const MAX_RECOVERY_ROUNDS: usize = 1_000;

/// The keys of the table holding the unknown key at `path` that are not in
/// the list of expected fields of serde's message `raw`, except the one at
/// `path` itself: each with its error, placed at the key.
fn other_unknown_keys(root: &Val<'_>, path: &[Seg], raw: &str) -> Vec<(Vec<Seg>, Diag)> {
    let Some((Seg::Key(first), parent)) = path.split_last() else { return Vec::new() };
    let Some(DeValue::Table(t)) = node(root, parent).map(Spanned::get_ref) else { return Vec::new() };
    let expected = raw.split_once(", ").map_or("", |(_, rest)| rest);
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let mut keys: Vec<_> =
        t.keys().filter(|k| k.get_ref() != first && !known.contains(&k.get_ref().as_ref())).collect();
    keys.sort_by_key(|k| k.span().start);
    keys.into_iter()
        .enumerate()
        .map(|(i, k)| {
            let mut p = parent.to_vec();
            p.push(Seg::Key(k.get_ref().to_string()));
            // Only the first few can be listed: the others are counted, so
            // they skip the search for a suggestion.
            let raw = format!("unknown field `{}`, {expected}", k.get_ref());
            let message = if i < limits::MAX_LISTED_ERRORS { explain(&raw, None) } else { raw };
            (p, Diag { at: Some(k.span().start), field: String::new(), message })
        })
        .collect()
}

/// Turns serde's message into one a person can act on.
fn explain(raw: &str, missing: Option<&str>) -> String {
    let mut msg = tidy(raw);
    if let Some(field) = missing {
        msg = match field {
            "horizon" => "missing; add e.g. horizon = \"2h\" (how long the drill runs)".to_owned(),
            "tier" => "missing; add e.g. tier = \"internal-ops\" (customer-facing, internal-ops, batch, sandbox) or a custom tier { name = \"…\", rto = \"5m\", rpo = \"1m\" }".to_owned(),
            f => format!("missing; add {f} = …"),
        };
    } else if (raw.starts_with("unknown variant") || raw.starts_with("unknown field"))
        && let Some(bad) = token(raw)
        && let Some((_, list)) = raw.split_once("expected ")
    {
        let options: Vec<String> = list.split('`').skip(1).step_by(2).map(str::to_owned).collect();
        if let Some(best) = did_you_mean(&bad, &options) {
            msg = format!("{msg}; did you mean \"{best}\"?");
        }
    }
    msg
}

/// Backticks to quotes, Rust's number types in words, and one line.
fn tidy(msg: &str) -> String {
    let mut m = msg.trim().replace("`\"`", "'\"'").replace('`', "\"").replace('\n', " ");
    if m.contains("max recursion depth met") {
        m.push_str("; tables and arrays nest too deeply here, write them flatter");
    }
    for (rust, words) in [
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected u32", "expected a whole number of 0 or more"),
        ("expected u16", "expected a whole number of 0 or more"),
        ("expected u8", "expected a whole number of 0 or more"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        if m.ends_with(rust) || m.contains(&format!("{rust},")) {
            m = m.replace(rust, words);
        }
    }
    m
}

fn did_you_mean<'o>(bad: &str, options: &'o [String]) -> Option<&'o str> {
    options
        .iter()
        .map(|o| (edit_distance(bad, o), o))
        .filter(|(d, o)| *d < bad.chars().count() && *d * 3 <= o.len().max(bad.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Stand-ins for missing required fields, so the rest can be checked. They
/// never trigger a cross-field rule, and a scenario with an error is never
/// returned, so they never run.
fn stand_in(field: &str) -> Option<&'static str> {
    match field {
        "tier" => Some("sandbox"),
        "horizon" => Some("876000h"),
        _ => None,
    }
}

fn build(src: &Sources, path: &Path) -> Result<Scenario, Vec<Diag>> {
    let root = tree(src, 0);
    let mut root = Spanned::new(root.span(), DeValue::Table(root.into_inner()));
    let whole = root.clone();
    let mut errs = Vec::new();
    // Faults one at a time, so an error in one does not hide the others.
    let mut faults: Vec<Option<FaultSpec>> = Vec::new();
    if let DeValue::Table(t) = root.get_mut()
        && t.get("faults").is_some_and(|f| matches!(f.get_ref(), DeValue::Array(_)))
        && let Some(fv) = t.remove("faults")
        && let DeValue::Array(items) = fv.into_inner()
    {
        for (i, item) in items.iter().enumerate() {
            let prefix = [Seg::Key("faults".into()), Seg::Index(i)];
            let r = recovering::<FaultSpec>(item.clone(), &prefix, &|_| None, &mut errs);
            faults.push(if r.clean { r.value } else { None });
        }
    }
    // The rest.
    let rest = recovering::<Scenario>(root.clone(), &[], &stand_in, &mut errs);
    let Some(mut sc) = rest.value else {
        return Err(errs);
    };
    if sc.name.is_empty() {
        sc.name = path.file_stem().map_or_else(|| "drill".into(), |s| s.to_string_lossy().into_owned());
    }
    // The cross-field rules, over the faults that parsed. A rule that reads
    // a field taken out or stood in for above would only mislead: skipped.
    let kept: Vec<usize> = (0..faults.len()).filter(|&i| faults[i].is_some()).collect();
    sc.faults = faults.into_iter().flatten().collect();
    let overlaps = |a: &str, b: &str| {
        let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
        long.starts_with(short) && matches!(long.as_bytes().get(short.len()), None | Some(b'.' | b'['))
    };
    for p in crate::drill::scenario::problems(&sc) {
        let field = renumber(&p.field, &kept);
        let reads = std::iter::once(p.field.as_str()).chain(p.depends_on.iter().map(String::as_str));
        if reads.clone().any(|r| rest.touched.iter().any(|t| overlaps(r, t))) {
            continue;
        }
        errs.push(Diag { at: place(&whole, &field), field, message: p.message });
    }
    if errs.is_empty() { Ok(sc) } else { Err(errs) }
}

/// `faults[j]` of the faults that parsed is `faults[kept[j]]` of the file.
fn renumber(field: &str, kept: &[usize]) -> String {
    if let Some(rest) = field.strip_prefix("faults[")
        && let Some((n, tail)) = rest.split_once(']')
        && let Ok(j) = n.parse::<usize>()
        && let Some(i) = kept.get(j)
    {
        return format!("faults[{i}]{tail}");
    }
    field.to_owned()
}

/// Where a field path is written, or its nearest written parent.
fn place(root: &Val<'_>, field: &str) -> Option<usize> {
    let mut path = Vec::new();
    for part in field.split('.') {
        let (key, idx) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').split("][").filter_map(|n| n.parse().ok()).collect()),
            None => (part, Vec::new()),
        };
        path.push(Seg::Key(key.to_owned()));
        path.extend(idx.into_iter().map(Seg::Index));
    }
    while !path.is_empty() {
        if let Some(n) = node(root, &path) {
            return Some(n.span().start);
        }
        path.pop();
    }
    None
}

/// Every scenario file (`*.toml`) under `dir`, sorted, skipping names that
/// start with `_` (shared pieces for `include`) or `.` (hidden): what
/// `agentdrill run DIR` runs. A sub-folder named `live` (live drills start
/// real processes) is walked only when it is `dir` itself.
pub fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(['_', '.'])) {
                continue;
            }
            if p.is_dir() && p.file_name().is_some_and(|n| n == "live") {
                continue;
            }
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("x.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn an_unknown_phase_points_at_the_value_and_names_the_field() {
        let e = err(
            "tier = \"internal-ops\"\nhorizon = \"1h\"\n[[faults]]\nkind = \"worker_kill\"\nat = { job = 1, step = 2, phase = \"mid_call\" }\n",
        );
        assert!(e.starts_with("x.toml:5:35: faults[0].at.phase: unknown variant \"mid_call\", expected one of"), "{e}");
    }

    #[test]
    fn every_error_is_listed() {
        let e = err(
            "tier = \"batch\"\nhorizon = \"soon\"\nbogus = 1\n[stack]\nworkers = \"four\"\n[[faults]]\nkind = \"region_loss\"\nat = \"1x\"\n[[faults]]\nkind = \"worker_kil\"\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 5, "{e}");
        assert!(lines[0].starts_with("x.toml:2:11: horizon: invalid duration \"soon\""), "{e}");
        assert!(lines[1].starts_with("x.toml:3:1: bogus: unknown field \"bogus\""), "{e}");
        assert!(lines[2].starts_with("x.toml:5:11: stack.workers: invalid type: string \"four\""), "{e}");
        assert!(lines[3].starts_with("x.toml:8:6: faults[0].at: invalid duration \"1x\""), "{e}");
        assert!(lines[4].contains("faults[1].kind: unknown variant \"worker_kil\""), "{e}");
        assert!(lines[4].ends_with("did you mean \"worker_kill\"?"), "{e}");
    }

    #[test]
    fn cross_field_errors_point_at_the_field() {
        let e = err(
            "tier = \"batch\"\nhorizon = \"1h\"\n[[faults]]\nkind = \"worker_kill\"\nat = \"5m\"\nworker = { index = 9 }\n",
        );
        assert!(e.starts_with("x.toml:6:10: faults[0].worker: worker 9 does not exist"), "{e}");
    }

    #[test]
    fn missing_fields_say_what_to_add() {
        let e = err("tier = \"batch\"\n");
        assert_eq!(e, "x.toml: horizon: missing; add e.g. horizon = \"2h\" (how long the drill runs)");
    }

    #[test]
    fn syntax_errors_have_a_place() {
        let e = err("tier = \"batch\nhorizon = 1h\n");
        assert!(e.starts_with("x.toml:1:"), "{e}");
    }

    #[test]
    fn merge_keeps_the_including_files_keys() {
        let dir = std::env::temp_dir().join(format!("agentdrill-loader-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("stacks")).unwrap();
        std::fs::write(
            dir.join("stacks/base.toml"),
            "tier = \"batch\"\n[stack]\nworkers = 6\nfailover = { dns_ttl = \"10s\", scale_up = \"5m\" }\nreplication = { mode = \"async\", lag_ms = 5, interval_ms = 5 }\n[workload]\ntasks = 7\n",
        )
        .unwrap();
        let text = "include = \"stacks/base.toml\"\nhorizon = \"1h\"\n[stack]\nfailover = { dns_ttl = \"20s\" }\nreplication = { mode = \"sync\" }\n";
        let l = parse(&dir.join("d.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        let s = &l.scenario.stack;
        assert_eq!(s.workers, 6);
        assert_eq!(s.failover.dns_ttl.ms(), 20_000);
        assert_eq!(s.failover.scale_up.ms(), 300_000);
        assert_eq!(s.replication, crate::components::orchestrator::Replication::Sync { degrade_after_ms: None });
        assert_eq!(l.scenario.workload.tasks, 7);
        assert_eq!(l.files.len(), 2);
        // An error in the included file names that file.
        std::fs::write(dir.join("stacks/bad.toml"), "[stack]\nworkers = 0\nstandby_workers = 0\n").unwrap();
        let e = parse(&dir.join("d.toml"), "include = \"stacks/bad.toml\"\ntier = \"batch\"\nhorizon = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml:2:11: stack.workers: must be at least 1 (included by "), "{e}");
        // A cycle.
        std::fs::write(dir.join("stacks/a.toml"), "include = \"b.toml\"\n").unwrap();
        std::fs::write(dir.join("stacks/b.toml"), "include = \"a.toml\"\n").unwrap();
        let e = parse(&dir.join("stacks/a.toml"), "include = \"b.toml\"\n").unwrap_err().to_string();
        assert!(e.contains("include cycle: a.toml includes b.toml includes a.toml"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_hash_is_fnv1a() {
        let mut h = Fnv1a::default();
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
    }
}
