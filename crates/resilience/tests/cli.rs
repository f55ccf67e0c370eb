//! The command line, run as a user would.

mod common;

use common::{cli, TestDir};
use std::os::unix::fs::PermissionsExt;

fn example(name: &str) -> String {
    format!(
        "{}/../../packaging/examples/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn examples_pass_check_config() {
    // The nodes' examples name a cluster key beside them: made as the
    // example's comment says, in a copy of the folder.
    let dir = TestDir::new("cli-examples");
    let key = dir.path("cluster.key");
    let (code, _, err) = cli(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for f in ["main.toml", "standby.toml", "edge.toml", "follow.toml"] {
        let copy = dir.path(f);
        std::fs::copy(example(f), &copy).unwrap();
        let (code, out, err) = cli(&["check-config", copy.to_str().unwrap()]);
        assert_eq!(code, 0, "{f}: {out}{err}");
        assert!(out.contains("OK"), "{out}");
        // No Rust debug text: the config's own words.
        assert!(!out.contains("Stable") && !out.contains("Some("), "{out}");
    }
}

#[test]
fn a_missing_cluster_key_is_an_error_with_the_command_that_makes_it() {
    // The node does not start without its key: check-config must not say OK.
    let (code, out, err) = cli(&["check-config", &example("main.toml")]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("OK"), "{out}");
    assert!(err.contains("resilience keygen --out"), "{err}");
}

#[test]
fn help_lists_the_exit_codes_and_what_config_is() {
    let (code, out, _) = cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Exit codes:") && out.contains("66"), "{out}");
    let (code, out, _) = cli(&["node", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("configuration file"), "{out}");
}

fn broken(dir: &TestDir, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(example("main.toml")).unwrap();
    assert!(text.contains(from), "example lacks {from}");
    let path = dir.path("broken.toml");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path.display().to_string()
}

fn line_of(file: &str, needle: &str) -> usize {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap()
        + 1
}

#[test]
fn misspelt_key_names_the_line_and_the_key() {
    let dir = TestDir::new("cli-misspelt");
    let f = broken(&dir, "failover_after = \"3s\"", "failover_aftr = \"3s\"");
    let (code, out, err) = cli(&["check-config", &f]);
    assert_ne!(code, 0, "{out}");
    let line = line_of(&f, "failover_aftr");
    assert!(
        err.contains(&format!("{f}:{line}")),
        "no file:line {line}: {err}"
    );
    assert!(err.contains("failover_aftr"), "{err}");
}

#[test]
fn bad_duration_names_the_line_and_the_key() {
    let dir = TestDir::new("cli-duration");
    let f = broken(
        &dir,
        "failover_after = \"3s\"",
        "failover_after = \"3 parsecs\"",
    );
    let (code, out, err) = cli(&["check-config", &f]);
    assert_ne!(code, 0, "{out}");
    let line = line_of(&f, "3 parsecs");
    assert!(
        err.contains(&format!("{f}:{line}")),
        "no file:line {line}: {err}"
    );
    assert!(err.contains("heartbeat.failover_after"), "{err}");
    assert!(err.contains("duration"), "{err}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = cli(&["check-config", "/nonexistent/node.toml"]);
    // Not 1, the code of an invalid config: a wrong path is another fault.
    assert_eq!(code, 66);
    assert!(
        err.contains("/nonexistent/node.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn keygen_prints_fresh_keys_and_writes_private_files() {
    let (c1, k1, _) = cli(&["keygen"]);
    let (c2, k2, _) = cli(&["keygen"]);
    assert_eq!((c1, c2), (0, 0));
    let (k1, k2) = (k1.trim(), k2.trim());
    assert_eq!(k1.len(), 64);
    assert!(k1.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(k1, k2);
    let dir = TestDir::new("cli-keygen");
    let out = dir.path("cluster.key");
    let (code, _, err) = cli(&["keygen", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&out).unwrap();
    let (code, _, err) = cli(&["keygen", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        first,
        "key overwritten"
    );
    // check-config accepts a config whose key file is this one.
    let cfg = dir.path("node.toml");
    let text = std::fs::read_to_string(example("main.toml")).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "key_file = \"cluster.key\"",
            &format!("key_file = \"{}\"", out.display()),
        ),
    )
    .unwrap();
    let (code, _, err) = cli(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    // ... and refuses a key file that is not a key.
    std::fs::write(&out, "not hex at all\n").unwrap();
    let (code, _, err) = cli(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("heartbeat.key_file"), "{err}");
}

#[test]
fn follow_with_a_bad_config_names_the_file_line_and_key() {
    let (code, _, err) = cli(&["follow", "--config", "/nonexistent/follow.toml"]);
    assert_eq!(code, 66);
    assert!(err.contains("/nonexistent/follow.toml"), "{err}");
    let dir = common::TestDir::new("follow-config");
    let cfg = dir.path("follow.toml");
    std::fs::write(
        &cfg,
        "[follow]\nnode = \"http://127.0.0.1:7480/api/v1/ha\"\nconfirm_polls = 0\n[[service]]\nname = \"nginx\"\nunit = \"nginx.service\"\n",
    )
    .unwrap();
    let (code, _, err) = cli(&["follow", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("follow.toml:3") && err.contains("follow.confirm_polls"),
        "{err}"
    );
    let (code, out, err) = cli(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("follow.confirm_polls"), "{err}");
}

#[test]
fn edge_with_a_bad_config_names_the_file_line_and_key() {
    let (code, _, err) = cli(&["edge", "--config", "/nonexistent/edge.toml"]);
    assert_eq!(code, 66);
    assert!(err.contains("/nonexistent/edge.toml"), "{err}");
    let dir = common::TestDir::new("edge-config");
    let cfg = dir.path("edge.toml");
    std::fs::write(
        &cfg,
        "[edge]\nsip_listen = \"127.0.0.1:5060\"\napi_listen = \"127.0.0.1:8090\"\n[[pbx]]\nname = \"main\"\nsip = \"127.0.0.1:5070\"\nhome = 1\n",
    )
    .unwrap();
    let (code, _, err) = cli(&["edge", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("edge.toml:7") && err.contains("pbx[0].home"),
        "{err}"
    );
}

#[test]
fn status_of_an_unreachable_node_exits_3() {
    // Bound, never listening: a connection there is refused, and no
    // other process can take the port while the test holds it.
    let closed = common::sockets::bound_not_listening();
    let port = closed.port();
    let (code, _, err) = cli(&["status", "--api", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(code, 3, "{err}");
}
