//! The metrics, checked from the source and the alert rules: every series
//! the binary writes has a `# HELP` description, counters end in `_total`,
//! and every series an alert rule reads is one the binary writes (a renamed
//! metric would otherwise leave its alert silent for ever).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The string literal that follows each `marker` in `text`.
fn names_after(text: &str, marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        rest = &rest[i + marker.len()..];
        let t = rest.trim_start();
        if let Some(t) = t.strip_prefix('"') {
            if let Some(end) = t.find('"') {
                out.push(t[..end].to_owned());
            }
        }
    }
    out
}

/// Words made of `[a-z0-9_]` that start with one of `prefixes`.
fn words_with(text: &str, prefixes: &[&str]) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| prefixes.iter().any(|p| w.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

struct Names {
    written: BTreeSet<String>,
    counters: BTreeSet<String>,
    described: BTreeSet<String>,
}

fn names() -> Names {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let (mut written, mut counters, mut described) = Default::default();
    let (w, c, d): (
        &mut BTreeSet<String>,
        &mut BTreeSet<String>,
        &mut BTreeSet<String>,
    ) = (&mut written, &mut counters, &mut described);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for m in ["gauge!(", "histogram!("] {
            w.extend(names_after(&text, m));
        }
        for m in ["counter!(", "Refusals::new("] {
            let n = names_after(&text, m);
            c.extend(n.iter().cloned());
            w.extend(n);
        }
        // The table of `metrics_export.rs`: `("name", Kind::…, "help"),`.
        if f.ends_with("metrics_export.rs") {
            d.extend(names_after(&text, "\n    ("));
        }
    }
    Names {
        written,
        counters,
        described,
    }
}

#[test]
fn every_series_is_described_and_counters_end_in_total() {
    let n = names();
    assert!(n.written.len() > 30, "found only {:?}", n.written);
    let undescribed: Vec<_> = n.written.difference(&n.described).collect();
    assert!(undescribed.is_empty(), "no # HELP for {undescribed:?}");
    let unwritten: Vec<_> = n.described.difference(&n.written).collect();
    assert!(
        unwritten.is_empty(),
        "described but never written: {unwritten:?}"
    );
    let bad: Vec<_> = n
        .counters
        .iter()
        .filter(|c| !c.ends_with("_total"))
        .collect();
    assert!(bad.is_empty(), "counters without _total: {bad:?}");
}

#[test]
fn every_series_an_alert_reads_is_written_by_the_binary() {
    let n = names();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/prometheus");
    let rules = std::fs::read_to_string(root.join("resilience.rules.yml")).unwrap();
    // Expressions only: the annotations' prose is not a series.
    let exprs: String = rules
        .lines()
        .scan(false, |in_expr, l| {
            let t = l.trim_start();
            if t.starts_with("expr:") {
                *in_expr = true;
            } else if !t.is_empty() && !l.starts_with("          ") {
                *in_expr = false;
            }
            Some(if *in_expr {
                l.to_owned()
            } else {
                String::new()
            })
        })
        .collect::<Vec<_>>()
        .join("\n");
    let read = words_with(&exprs, &["resilience_", "process_"]);
    assert!(read.len() >= 8, "found only {read:?} in the rules");
    let missing: Vec<_> = read.difference(&n.written).collect();
    assert!(
        missing.is_empty(),
        "the rules read series the binary never writes: {missing:?}"
    );
}

#[test]
fn every_series_the_grafana_dashboard_reads_is_written_by_the_binary() {
    let n = names();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/prometheus/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).unwrap();
    // Only the queries: `"expr": "..."` values.
    let exprs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("\"expr\":"))
        .collect();
    assert!(exprs.len() >= 8, "found {} queries", exprs.len());
    let read = words_with(&exprs.join("\n"), &["resilience_", "process_"]);
    let missing: Vec<_> = read.difference(&n.written).collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads series the binary never writes: {missing:?}"
    );
}
