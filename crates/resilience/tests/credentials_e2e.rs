//! Weak credentials are refused: a real `resilience node` started with a
//! cluster key, an API token or a TLS private key that group or others may
//! read (or a token shorter than 32 characters) exits at once, naming the
//! file and the fix; `check-config` reports the same; `keygen` and `cert`
//! leave private files at mode 0600 even when they replace one.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Start the Main and expect it to stop by itself with exit code 1: its log.
fn main_refuses_to_start(p: &mut Pair) -> String {
    p.spawn(MAIN);
    let node = p.nodes[MAIN].as_mut().unwrap();
    let mut status = None;
    // Generous: a refused start takes milliseconds; an accepted one runs on.
    wait_until(Duration::from_secs(30), || {
        status = node.exited();
        status.is_some()
    });
    let log = p.logs();
    let status = status.unwrap_or_else(|| panic!("the node started and kept running\n{log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        p.active(MAIN).is_none(),
        "a refused node must not serve its API"
    );
    log
}

/// `resilience cert init` + `issue pbx-main` in the pair's `pki` folder:
/// (cert, key) paths.
fn issue_cert(p: &Pair) -> (String, String) {
    let pki = p.dir.path("pki").display().to_string();
    for args in [
        vec!["cert", "init", "--dir", &pki],
        vec!["cert", "issue", "pbx-main", "--dir", &pki],
    ] {
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    (format!("{pki}/pbx-main.crt"), format!("{pki}/pbx-main.key"))
}

#[test]
fn a_cluster_key_others_can_read_stops_the_node() {
    let _g = serial();
    let mut p = Pair::new("cred-key", "manual", "policy = \"manual\"", false);
    let key = p.dir.path("cluster.key");
    chmod(&key, 0o644);
    let log = main_refuses_to_start(&mut p);
    let k = key.display();
    assert!(
        log.contains(&format!(
            "cluster key {k}: mode 0644 lets its group and others read it"
        )) && log.contains(&format!("run `chmod 600 {k}`")),
        "{log}"
    );
    // The fix named works.
    chmod(&key, 0o600);
    p.start(MAIN);
}

#[test]
fn an_api_token_others_can_read_stops_the_node() {
    let _g = serial();
    let mut p = Pair::new("cred-token", "manual", "policy = \"manual\"", false);
    let token = p.dir.path("api.token");
    chmod(&token, 0o644);
    let log = main_refuses_to_start(&mut p);
    let t = token.display();
    assert!(
        log.contains(&format!(
            "API token {t}: mode 0644 lets its group and others read it"
        )) && log.contains(&format!("run `chmod 600 {t}`")),
        "{log}"
    );
}

#[test]
fn a_five_character_token_stops_the_node() {
    let _g = serial();
    let mut p = Pair::new("cred-short", "manual", "policy = \"manual\"", false);
    let token = p.dir.path("api.token");
    write_secret(&token, "abcde\n");
    let log = main_refuses_to_start(&mut p);
    let t = token.display();
    assert!(
        log.contains(&format!(
            "API token {t}: 5 characters; a token needs at least 32"
        )) && log.contains(&format!("resilience keygen --token --force --out {t}")),
        "{log}"
    );
    // The command the message gives makes a token the node takes.
    let (code, _, err) = cli(&["keygen", "--token", "--force", "--out", &t.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode_of(&token), 0o600);
    p.start(MAIN);
}

#[test]
fn tls_private_keys_others_can_read_stop_the_node() {
    let _g = serial();
    let mut p = Pair::new("cred-tls", "manual", "policy = \"manual\"", false);
    let (crt, key) = issue_cert(&p);
    let ca = p.dir.path("pki/ca.pem").display().to_string();
    // The API's key, readable by its group.
    p.set_extra(MAIN, format!("tls_cert = \"{crt}\"\ntls_key = \"{key}\"\n"));
    chmod(Path::new(&key), 0o640);
    let log = main_refuses_to_start(&mut p);
    assert!(
        log.contains(&format!(
            "API TLS key {key}: mode 0640 lets its group read it; run `chmod 600 {key}`"
        )),
        "{log}"
    );
    // The replication key, writable by others.
    p.set_extra(
        MAIN,
        format!(
            "\n[replication]\nlisten = \"127.0.0.1:0\"\npeer = \"127.0.0.1:9\"\nca = \"{ca}\"\ncert = \"{crt}\"\nkey = \"{key}\"\n"
        ),
    );
    chmod(Path::new(&key), 0o602);
    let log = main_refuses_to_start(&mut p);
    assert!(
        log.contains(&format!(
            "replication key {key}: mode 0602 lets others write it; run `chmod 600 {key}`"
        )),
        "{log}"
    );
}

#[test]
fn a_key_owned_by_another_user_stops_the_node() {
    // Only root can give a file away; CI runs as root.
    if euid() != 0 {
        eprintln!("skipped: needs root to chown a file to another user");
        return;
    }
    let _g = serial();
    let mut p = Pair::new("cred-owner", "manual", "policy = \"manual\"", false);
    let key = p.dir.path("cluster.key");
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let log = main_refuses_to_start(&mut p);
    let k = key.display();
    assert!(
        log.contains(&format!("cluster key {k}: owned by uid 65534"))
            && log.contains(&format!("run `chown 0 {k}`")),
        "{log}"
    );
}

/// The effective uid, from the owner of a file this process creates.
fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let d = TestDir::new("cred-euid");
    std::fs::write(d.path("f"), "").unwrap();
    std::fs::metadata(d.path("f")).unwrap().uid()
}

#[test]
fn private_files_and_a_long_token_start_and_the_token_works() {
    let _g = serial();
    let mut p = Pair::new("cred-ok", "manual", "policy = \"manual\"", false);
    assert_eq!(mode_of(&p.dir.path("cluster.key")), 0o600);
    assert!(TOKEN.len() >= 32);
    p.start(MAIN);
    let (code, body) = post(&p.url(MAIN, "/api/v1/services/start"), Some(TOKEN));
    assert_eq!(code, 200, "{body}\n{}", p.logs());
    assert!(wait_until(Duration::from_secs(10), || p.marker(MAIN)));
}

#[test]
fn check_config_reports_each_weak_secret() {
    let mut p = Pair::new("cred-check", "manual", "policy = \"manual\"", false);
    let cfg = p.config_path(MAIN).display().to_string();
    let check = || cli(&["check-config", &cfg]);
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");

    let key = p.dir.path("cluster.key");
    let k = key.display();
    chmod(&key, 0o644);
    let (code, _, err) = check();
    assert_eq!(code, 1, "a 0644 cluster key passed: {err}");
    assert!(
        err.contains(&format!(
            "cluster key {k}: mode 0644 lets its group and others read it; run `chmod 600 {k}`"
        )),
        "{err}"
    );
    chmod(&key, 0o600);

    let token = p.dir.path("api.token");
    let t = token.display();
    chmod(&token, 0o644);
    let (code, _, err) = check();
    assert_eq!(code, 1, "a 0644 token passed: {err}");
    assert!(
        err.contains(&format!(
            "API token {t}: mode 0644 lets its group and others read it; run `chmod 600 {t}`"
        )),
        "{err}"
    );
    write_secret(&token, "abcde\n");
    let (code, _, err) = check();
    assert_eq!(code, 1, "a 5-character token passed: {err}");
    assert!(
        err.contains(&format!(
            "API token {t}: 5 characters; a token needs at least 32"
        )),
        "{err}"
    );
    write_secret(&token, &format!("{TOKEN}\n"));

    let (crt, tls_key) = issue_cert(&p);
    p.set_extra(
        MAIN,
        format!("tls_cert = \"{crt}\"\ntls_key = \"{tls_key}\"\n"),
    );
    chmod(Path::new(&tls_key), 0o660);
    let (code, _, err) = check();
    assert_eq!(code, 1, "a 0660 TLS key passed: {err}");
    assert!(
        err.contains(&format!(
            "API TLS key {tls_key}: mode 0660 lets its group read and write it; run `chmod 600 {tls_key}`"
        )),
        "{err}"
    );
    chmod(Path::new(&tls_key), 0o600);
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn keygen_and_cert_replace_files_as_private_ones() {
    let dir = TestDir::new("cred-keygen");
    let key = dir.path("cluster.key");
    std::fs::write(&key, "old\n").unwrap();
    chmod(&key, 0o644);
    let k = key.display().to_string();
    let (code, _, err) = cli(&["keygen", "--force", "--out", &k]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode_of(&key), 0o600, "keygen --force left the old mode");
    assert_ne!(std::fs::read_to_string(&key).unwrap(), "old\n");

    let pki = dir.path("pki");
    let d = pki.display().to_string();
    assert_eq!(cli(&["cert", "init", "--dir", &d]).0, 0);
    assert_eq!(mode_of(&pki.join("ca.key")), 0o600);
    chmod(&pki.join("ca.key"), 0o644);
    // An exposed CA key is refused when it is used...
    let (code, _, err) = cli(&["cert", "issue", "pbx-main", "--dir", &d]);
    assert_eq!(code, 1, "issued with a 0644 CA key: {err}");
    assert!(
        err.contains("mode 0644 lets its group and others read it"),
        "{err}"
    );
    // ... and a replaced one is private again.
    let (code, _, err) = cli(&["cert", "init", "--force", "--dir", &d]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode_of(&pki.join("ca.key")), 0o600);
    assert_eq!(cli(&["cert", "issue", "pbx-main", "--dir", &d]).0, 0);
    assert_eq!(mode_of(&pki.join("pbx-main.key")), 0o600);
}
