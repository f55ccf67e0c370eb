//! The binary's module structure, checked from its source: no import cycle
//! between its top-level modules, no lower layer importing a higher one, and
//! no function over [`MAX_FN_LINES`] lines unless its doc says why.
//!
//! A file `src/x.rs` or a folder `src/x/` is module `x`; an edge `a -> b` is
//! any `crate::b` path written in module `a` (in `use` lines, grouped
//! `use crate::{b, c}` or inline `crate::b::f(`), comments excluded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may use modules of its own layer or
/// below, never above (the same table is in ARCHITECTURE.md).
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "paths",
            "journal",
            "clock",
            "secret",
            "ratelog",
            "shutdown",
            "metrics_export",
            "http_client",
            "http_server",
            "cert_reload",
            "status",
            "listen_fds",
            "keygen",
            "node_config",
        ],
    ),
    (
        "libraries",
        &[
            "services",
            "replication",
            "pbx_settings",
            "standin",
            "node_handle",
        ],
    ),
    ("http glue", &["web", "api"]),
    ("roles", &["node", "edge", "follow"]),
    (
        "entry",
        &["main", "cli", "client", "check_config", "lab", "manpages"],
    ),
];

/// Functions longer than this need "Long because" in their doc comment.
const MAX_FN_LINES: usize = 80;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every .rs file under `dir`, as (path relative to `src/`, text).
fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).unwrap();
            out.push((rel, text));
        }
    }
}

/// The top-level module a file belongs to: `x.rs` or `x/...` is `x`.
fn module_of(rel: &str) -> String {
    let first = rel.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a source text names through `crate::`, comment
/// lines excluded; grouped `crate::{a, b::c}` yields `a` and `b`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut refs = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        // Not part of a longer name (`mycrate::`, `$crate::`).
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start => {
                        let id = ident_at(&group[j..]);
                        if !id.is_empty() && id != "self" {
                            refs.insert(id.to_string());
                        }
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let id = ident_at(rest);
            if !id.is_empty() {
                refs.insert(id.to_string());
            }
        }
    }
    refs
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The graph between top-level modules (self edges left out).
fn module_graph(files: &[(String, String)]) -> Graph {
    let mut g = Graph::new();
    for (rel, text) in files {
        let from = module_of(rel);
        let to = g.entry(from.clone()).or_default();
        for r in crate_refs(text) {
            if r != from {
                to.insert(r);
            }
        }
    }
    g
}

/// A cycle in `g` as the list of modules along it (first repeated at the
/// end), or None.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        n: &'a str,
        g: &'a Graph,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut c: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n);
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n);
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut done, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn layer_of(m: &str) -> Option<(usize, &'static str)> {
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, ms))| ms.contains(&m))
        .map(|(i, (name, _))| (i, *name))
}

/// Each edge that goes from a lower layer up, and each module not in the table.
fn layer_violations(g: &Graph) -> Vec<String> {
    let mut bad = Vec::new();
    for (from, tos) in g {
        let Some((lf, nf)) = layer_of(from) else {
            bad.push(format!("module `{from}` is in no layer of LAYERS"));
            continue;
        };
        for to in tos {
            match layer_of(to) {
                None => bad.push(format!("module `{to}` (used by `{from}`) is in no layer")),
                Some((lt, nt)) if lt > lf => bad.push(format!(
                    "`{from}` ({nf}) uses `{to}` ({nt}), a higher layer"
                )),
                _ => {}
            }
        }
    }
    bad
}

/// Functions of more than `max` lines, from `fn` to the closing brace at the
/// same indentation, whose doc comment lacks "Long because".
fn long_functions(rel: &str, text: &str, max: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let mut words = body;
        for q in [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "async ",
            "unsafe ",
        ] {
            words = words.strip_prefix(q).unwrap_or(words);
            words = words.strip_prefix(q).unwrap_or(words);
        }
        let Some(sig) = words.strip_prefix("fn ") else {
            continue;
        };
        let name = ident_at(sig);
        // Where the signature ends: `{` opens a body, `;` has none.
        let Some(open) = (i..lines.len()).find(|&j| {
            let t = lines[j].trim_end();
            t.ends_with('{') || t.ends_with(';') || t.ends_with('}')
        }) else {
            continue;
        };
        if !lines[open].trim_end().ends_with('{') {
            continue; // a declaration, or a body on one line
        }
        let close = format!("{indent}}}");
        let Some(end) = (open..lines.len()).find(|&j| lines[j] == close) else {
            continue;
        };
        let len = end - i + 1;
        if len <= max {
            continue;
        }
        let doc: String = lines[..i]
            .iter()
            .rev()
            .take_while(|l| {
                let t = l.trim_start();
                t.starts_with("///") || t.starts_with("#[")
            })
            .copied()
            .collect::<Vec<_>>()
            .join("\n");
        if !doc.contains("Long because") {
            found.push(format!("{rel}:{} fn {name}: {len} lines", i + 1));
        }
    }
    found
}

fn binary_sources() -> Vec<(String, String)> {
    let root = src_dir();
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    assert!(
        files.iter().any(|(r, _)| r == "main.rs"),
        "no main.rs under {}",
        root.display()
    );
    files
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let g = module_graph(&binary_sources());
    if let Some(c) = find_cycle(&g) {
        panic!("import cycle between modules: {}", c.join(" -> "));
    }
}

#[test]
fn no_lower_layer_imports_a_higher_one() {
    let bad = layer_violations(&module_graph(&binary_sources()));
    assert!(bad.is_empty(), "layer violations:\n{}", bad.join("\n"));
}

#[test]
fn no_long_function_without_a_reason() {
    let mut long = Vec::new();
    for (rel, text) in binary_sources() {
        long.extend(long_functions(&rel, &text, MAX_FN_LINES));
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines without \"Long because\" in their doc:\n{}",
        long.join("\n")
    );
}

fn graph(edges: &[(&str, &str)]) -> Graph {
    let mut g = Graph::new();
    for (a, b) in edges {
        g.entry(a.to_string()).or_default().insert(b.to_string());
        g.entry(b.to_string()).or_default();
    }
    g
}

#[test]
fn a_cycle_is_found_and_named() {
    let g = graph(&[
        ("node", "api"),
        ("api", "web"),
        ("web", "node"),
        ("node", "paths"),
    ]);
    let c = find_cycle(&g).expect("the cycle must be found");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4, "{c:?}");
    for m in ["node", "api", "web"] {
        assert!(c.iter().any(|x| x == m), "{c:?}");
    }
    assert_eq!(
        find_cycle(&graph(&[("node", "api"), ("api", "paths")])),
        None
    );
}

#[test]
fn references_are_read_from_use_groups_and_inline_paths() {
    let text = "use crate::{paths, node_handle::{Msg, ApiState}, self};\n\
                // crate::lab in a comment\n\
                fn f() { let p = crate::clock::unix_ms(t); }\n\
                use crate::http_server as server;\n";
    let got: Vec<_> = crate_refs(text).into_iter().collect();
    assert_eq!(got, ["clock", "http_server", "node_handle", "paths"]);
    let g = module_graph(&[("edge/mod.rs".into(), "use crate::node::x;".into())]);
    assert!(
        layer_violations(&g).is_empty(),
        "a role may use a role of its own layer"
    );
}

#[test]
fn an_upward_import_is_a_violation() {
    let bad = layer_violations(&graph(&[("paths", "node")]));
    assert!(
        bad.iter()
            .any(|b| b.contains("`paths` (leaves) uses `node` (roles)")),
        "{bad:?}"
    );
}

#[test]
fn a_long_function_needs_a_reason() {
    let body = "    x();\n".repeat(90);
    let text = format!(
        "fn long() {{\n{body}}}\n\n/// Long because it is a table.\nfn ok() {{\n{body}}}\n"
    );
    let found = long_functions("x.rs", &text, MAX_FN_LINES);
    assert_eq!(found, ["x.rs:1 fn long: 92 lines"]);
}
