//! The dashboard in a real browser: two real nodes in manual mode, and
//! `tests/browser/dashboard.mjs` driving Debian's Chromium with
//! playwright-core (installed by scripts/test.sh). Screenshots are kept in
//! `target/tmp/dashboard/` as the test's artifacts.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn dashboard_shows_and_drives_both_nodes() {
    let _g = serial();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("tests/browser/dashboard.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is missing: run `npm ci` in tests/browser (scripts/test.sh does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing (scripts/test.sh installs it)"
    );
    let mut p = Pair::new("dashboard", "manual", "policy = \"manual\"", false);
    p.start(MAIN);
    p.start(STANDBY);
    let cfg = p.config_path(MAIN);
    let (code, out, err) = cli(&["services", "start", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        wait_until(Duration::from_secs(10), || p.running(MAIN)
            && p.status(STANDBY)["peer"]["active"] == true),
        "{}",
        p.logs()
    );
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new("node")
        .arg(&script)
        .env("MAIN_URL", p.url(MAIN, "/"))
        .env("STANDBY_URL", p.url(STANDBY, "/"))
        .env("TOKEN", TOKEN)
        .env(
            "MAIN_PID",
            p.nodes[MAIN].as_ref().unwrap().pid().to_string(),
        )
        .env("ARTIFACTS", &artifacts)
        .output()
        .expect("node (Node.js) must be installed");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{log}");
    assert!(
        out.status.success(),
        "browser checks failed:\n{log}\n{}",
        p.logs()
    );
    // What the page showed is what the nodes say: the Main stopped its
    // services (then the script killed it).
    assert!(
        !p.marker(MAIN),
        "Stop services left the Main's services running"
    );
    let shot = artifacts.join("dashboard-main.png");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        shot.display()
    );
}
