//! The catalogue's HTML report in a real browser: headless Chromium renders
//! it, takes a screenshot (which must not be blank) and dumps the DOM (every
//! drill must have its card and its timeline SVG), and the page must log no
//! console message. Chromium is part of the test set-up (`cargo xtask
//! test` installs Debian's `chromium`): without it this test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn agentdrill(args: &[&str]) -> std::process::Output {
    assert_cmd::Command::cargo_bin("agentdrill")
        .expect("the binary is built")
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

/// The browser: `$CHROMIUM`, else `chromium` on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "CHROMIUM={} is not a file: set the machine up with `cargo xtask test`", p.display());
        return p;
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed: this test needs a headless browser. Set the machine up with `cargo xtask test` \
             (it installs Debian's `chromium` package), or run `apt-get install -y chromium`, or point CHROMIUM at one."
        )
    })
}

/// Runs headless Chromium on a file with extra arguments, at most two
/// minutes (coreutils `timeout`): (stdout, stderr).
fn browse(page: &Path, args: &[&str]) -> (String, String) {
    let browser = chromium();
    let url = format!("file://{}", page.display());
    let out = Command::new("timeout")
        .arg("120")
        .arg(&browser)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .args(["--enable-logging=stderr", "--v=0", "--window-size=1200,2400"])
        .args(args)
        .arg(&url)
        .output()
        .unwrap_or_else(|e| {
            panic!("{}: cannot start: {e}; set the machine up with `cargo xtask test`", browser.display())
        });
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{} {args:?} failed ({}):\n{stderr}", browser.display(), out.status);
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// Console messages the page logged (Chromium prints them as `:CONSOLE`).
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// Share of pixels that are not near-white, and how many distinct colours.
fn ink(png_path: &Path) -> (f64, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).expect("screenshot")));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "an RGB screenshot, got {:?}", info.color_type);
    let pixels = buf[..info.buffer_size()].chunks(channels);
    let mut inked = 0usize;
    let mut colours = std::collections::BTreeSet::new();
    let mut total = 0usize;
    for p in pixels {
        total += 1;
        if p[..3].iter().any(|&c| c < 235) {
            inked += 1;
        }
        if colours.len() < 10_000 {
            colours.insert((p[0], p[1], p[2]));
        }
    }
    (inked as f64 / total.max(1) as f64, colours.len())
}

fn drill_count() -> usize {
    let out = agentdrill(&["list", "scenarios/"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().expect("a summary line");
    last.trim_end_matches(" drills").parse().unwrap_or_else(|_| panic!("`list` ends with \"N drills\": {last}"))
}

#[test]
fn the_catalogue_report_renders_in_a_browser_with_a_card_and_a_timeline_per_drill() {
    let dir = std::env::temp_dir().join(format!("agentdrill-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp folder");
    let page = dir.join("report.html");
    let out = agentdrill(&["run", "scenarios/", "--format", "html"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let html = String::from_utf8(out.stdout).expect("UTF-8");
    // Self-contained: nothing fetched, nothing run.
    for banned in ["<script", "src=\"http", "href=\"http", "@import", "url(", "<link"] {
        assert!(!html.contains(banned), "the report must be self-contained, found {banned}");
    }
    std::fs::write(&page, &html).expect("page written");
    let n = drill_count();
    assert!(n >= 40, "the catalogue has its drills ({n})");

    let shot = dir.join("report.png");
    let (_, stderr) = browse(&page, &[&format!("--screenshot={}", shot.display())]);
    assert!(console_lines(&stderr).is_empty(), "console messages:\n{}", console_lines(&stderr).join("\n"));
    let (inked, colours) = ink(&shot);
    assert!(inked > 0.03, "the screenshot is blank: {:.2}% of pixels inked", inked * 100.0);
    assert!(colours > 20, "the screenshot has {colours} colours: nothing drawn");

    let (dom, stderr) = browse(&page, &["--dump-dom"]);
    assert!(console_lines(&stderr).is_empty(), "console messages:\n{}", console_lines(&stderr).join("\n"));
    let cards: Vec<&str> = dom.split("<article class=\"card").skip(1).collect();
    assert_eq!(cards.len(), n, "one card per drill");
    for (i, card) in cards.iter().enumerate() {
        let card = card.split("</article>").next().expect("a card");
        assert_eq!(card.matches("<figure class=\"timeline\"><svg").count(), 1, "card {}: one timeline SVG", i + 1);
        assert_eq!(card.matches("<figure class=\"bar\"><svg").count(), 2, "card {}: RTO and RPO bars", i + 1);
        assert!(card.contains("class=\"claim\""), "card {}: the claim", i + 1);
    }
    assert_eq!(dom.matches("<svg").count(), html.matches("<svg").count(), "the browser parsed every SVG");
    assert!(dom.contains("Runbook") && dom.contains("P1 incident playbook"), "the runbook ends the page");
    std::fs::remove_dir_all(&dir).expect("temp folder removed");
}
