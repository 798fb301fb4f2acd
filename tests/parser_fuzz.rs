//! The parser never panics: arbitrary text, TOML-shaped noise, and the
//! catalogue's own files mutated (lines deleted, duplicated and swapped,
//! characters flipped, numbers changed) all give a scenario or an error,
//! never a panic, and an error always names the file.

use std::path::{Path, PathBuf};

use agentdrill::drill::loader;
use proptest::prelude::*;

fn catalogue() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("folder") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"), &mut files);
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bad"), &mut files);
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).expect("readable"))).collect()
}

/// One edit of a scenario's text.
#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    /// Replace the character at a position with one of a TOML-ish alphabet.
    Flip(usize, char),
    /// Insert a character.
    Insert(usize, char),
    /// Replace the n-th run of digits with a number.
    Number(usize, i128),
    /// Cut the text at a position.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let ch = prop::sample::select(vec![
        '"', '\'', '=', '[', ']', '{', '}', ',', '.', '#', '\n', ' ', '0', '9', '-', 'a', 'z', '_', 'µ', '\\', 'é',
    ]);
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), ch.clone()).prop_map(|(p, c)| Mutation::Flip(p, c)),
        (any::<usize>(), ch).prop_map(|(p, c)| Mutation::Insert(p, c)),
        (
            any::<usize>(),
            prop_oneof![
                Just(0i128),
                Just(-1),
                Just(u32::MAX as i128 + 1),
                Just(u64::MAX as i128),
                Just(u64::MAX as i128 + 1),
                any::<i64>().prop_map(i128::from),
            ]
        )
            .prop_map(|(n, v)| Mutation::Number(n, v)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn char_index(text: &str, p: usize) -> usize {
    let n = text.chars().count().max(1);
    text.char_indices().nth(p % n).map_or(text.len(), |(i, _)| i)
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    let n = lines.len().max(1);
    match m {
        Mutation::DeleteLine(i) => {
            if !lines.is_empty() {
                lines.remove(i % n);
            }
            lines.join("\n")
        }
        Mutation::DuplicateLine(i) => {
            if !lines.is_empty() {
                let l = lines[i % n];
                lines.insert(i % n, l);
            }
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            if !lines.is_empty() {
                lines.swap(a % n, b % n);
            }
            lines.join("\n")
        }
        Mutation::Flip(p, c) => {
            let i = char_index(text, *p);
            let mut s = text.to_owned();
            if i < s.len() {
                let len = s[i..].chars().next().map_or(0, char::len_utf8);
                s.replace_range(i..i + len, &c.to_string());
            }
            s
        }
        Mutation::Insert(p, c) => {
            let i = char_index(text, *p);
            let mut s = text.to_owned();
            s.insert(i, *c);
            s
        }
        Mutation::Number(k, v) => {
            let runs: Vec<(usize, usize)> = {
                let b = text.as_bytes();
                let mut out = Vec::new();
                let mut i = 0;
                while i < b.len() {
                    if b[i].is_ascii_digit() {
                        let s = i;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                        out.push((s, i));
                    } else {
                        i += 1;
                    }
                }
                out
            };
            if runs.is_empty() {
                return text.to_owned();
            }
            let (s, e) = runs[k % runs.len()];
            format!("{}{v}{}", &text[..s], &text[e..])
        }
        Mutation::Truncate(p) => text[..char_index(text, *p)].to_owned(),
    }
}

fn parses_or_names_the_file(path: &Path, text: &str) {
    if let Err(e) = loader::parse(path, text) {
        let shown = e.to_string();
        let name = path.file_name().expect("a name").to_string_lossy();
        assert!(shown.contains(name.as_ref()) || shown.contains(".toml"), "an error that names no file: {shown}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        parses_or_names_the_file(Path::new("fuzz.toml"), &text);
    }

    #[test]
    fn toml_shaped_noise_never_panics(text in "[a-z_]{1,8} = (\"[a-z0-9 ]{0,8}\"|[0-9-]{1,4}|\\{ [a-z]{1,5} = [0-9]{1,3} \\}|\\[\\[?[a-z]{1,6}\\]\\]?|true)(\n[a-z_]{1,8} = (\"[0-9]{1,3}[smh]\"|[0-9]{1,3}))*") {
        parses_or_names_the_file(Path::new("fuzz.toml"), &text);
    }

    #[test]
    fn mutated_catalogue_files_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(mutation(), 1..6),
    ) {
        let files = catalogue();
        let (path, text) = &files[pick.index(files.len())];
        let mut t = text.clone();
        for m in &edits {
            t = apply(&t, m);
        }
        parses_or_names_the_file(path, &t);
    }
}

#[test]
fn the_mutations_do_mutate() {
    let t = "tier = \"batch\"\nhorizon = \"2h\"\n";
    assert_eq!(apply(t, &Mutation::DeleteLine(0)), "horizon = \"2h\"");
    assert_eq!(apply(t, &Mutation::Number(0, -5)), "tier = \"batch\"\nhorizon = \"-5h\"\n");
    assert_eq!(apply(t, &Mutation::Truncate(3)), "tie");
}
