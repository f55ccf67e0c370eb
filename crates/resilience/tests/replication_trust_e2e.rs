//! End-to-end: replication creates no privilege and stays beneath each
//! job's folder. Real nodes on loopback; a raw client holding the Main's
//! certificate plays a compromised Main.

mod common;

use common::repl::{frame, main_session, read_frame};
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Chowning needs root; a test that cannot do what it checks fails.
fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test sets file owners: run it as root"
    );
}

/// The address a node's replication server bound (its `listen` port is 0).
fn replication_port(log: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("replication: accepting pushes on "))?;
    let addr = line
        .split("accepting pushes on ")
        .nth(1)?
        .split(' ')
        .next()?;
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// A pair replicating with the given job tables (`jobs[i]` for node i).
/// The Standby starts first on port 0; the Main is told the port it bound.
/// Returns the pair (Main active, Standby passive) and the Standby's port.
fn trust_pair(test: &str, jobs: [String; 2]) -> (Pair, u16) {
    let mut p = Pair::new(test, "automatic", "policy = \"immediate\"", false);
    let pki = p.dir.path("pki");
    let pki_s = pki.display().to_string();
    for args in [
        vec!["cert", "init", "--dir", &pki_s],
        vec!["cert", "issue", "pbx-main", "--dir", &pki_s],
        vec!["cert", "issue", "pbx-standby", "--dir", &pki_s],
    ] {
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    let names = [p.specs[0].name.clone(), p.specs[1].name.clone()];
    let section = |i: usize, peer: u16| {
        let name = &names[i];
        format!(
            "\n[replication]\nlisten = \"127.0.0.1:0\"\npeer = \"127.0.0.1:{peer}\"\nca = \"{pki_s}/ca.pem\"\ncert = \"{pki_s}/{name}.crt\"\nkey = \"{pki_s}/{name}.key\"\n{}",
            jobs[i]
        )
    };
    // The Standby never connects to its peer here (no keep_on_failback).
    let extra = section(STANDBY, 9);
    p.set_extra(STANDBY, extra);
    p.start(STANDBY);
    let log = p.dir.path("pbx-standby.log");
    let mut port = None;
    assert!(
        wait_until(secs(10), || {
            port = replication_port(&log);
            port.is_some()
        }),
        "the standby never said where it accepts pushes\n{}",
        p.logs()
    );
    let port = port.unwrap_or_default();
    let extra = section(MAIN, port);
    p.set_extra(MAIN, extra);
    p.start(MAIN);
    assert!(
        wait_until(secs(20), || p.running(MAIN)
            && p.active(STANDBY) == Some(false)),
        "{}",
        p.logs()
    );
    (p, port)
}

fn dir_job(name: &str, path: &Path, more: &str) -> String {
    std::fs::create_dir_all(path).unwrap();
    format!(
        "\n[[replication.dir]]\nname = \"{name}\"\npath = \"{}\"\n{more}",
        path.display()
    )
}

fn replicate(p: &Pair) -> (i32, String, String) {
    cli(&[
        "replicate",
        "--config",
        p.config_path(MAIN).to_str().unwrap(),
    ])
}

fn write(root: &Path, rel: &str, body: &[u8], mode: u32) {
    let f = root.join(rel);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, body).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// (mode with special bits, uid, gid) of `p`, not following a link.
fn owned(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn a_setuid_file_arrives_plain_and_owned_by_the_folder_owner() {
    let _g = serial();
    require_root();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let (nuid, ngid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let d = TestDir::new("trust-owner-paths");
    let (src, dst) = (d.path("main-etc"), d.path("standby-etc"));
    let (src2, dst2) = (d.path("main-spool"), d.path("standby-spool"));
    // On the Main, an unprivileged user's setuid file and special folders.
    // (chown first: the kernel clears setuid on a chown.)
    write(&src, "bin/tool", b"#!/bin/sh\nid\n", 0o755);
    chown(&src.join("bin/tool"), nuid, ngid);
    std::fs::set_permissions(
        src.join("bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    assert_eq!(owned(&src.join("bin/tool")), (0o4755, nuid, ngid));
    std::fs::create_dir_all(src.join("shared")).unwrap();
    std::fs::set_permissions(src.join("shared"), std::fs::Permissions::from_mode(0o3777)).unwrap();
    write(&src, "sip.conf", b"[general]\n", 0o640);
    write(&src2, "vm/1001/msg0000.txt", b"hello", 0o2644);
    // The Standby's folder belongs to some unprivileged account; a setuid
    // copy left there by an older version, same content and time as the
    // Main's, loses its bit too.
    std::fs::create_dir_all(&dst).unwrap();
    chown(&dst, 1234, 1235);
    let t = std::time::UNIX_EPOCH + secs(1_700_000_000);
    for (root, mode) in [(&src, 0o755), (&dst, 0o4755)] {
        write(root, "legacy", b"same", mode);
        std::fs::File::options()
            .write(true)
            .open(root.join("legacy"))
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(t))
            .unwrap();
    }
    let jobs = [
        dir_job("etc", &src, "") + &dir_job("spool", &src2, ""),
        dir_job("etc", &dst, "") + &dir_job("spool", &dst2, "owner = \"nobody\"\ngroup = 4321\n"),
    ];
    let (p, _) = trust_pair("trust-owner", jobs);
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}\n{}", p.logs());
    // Default: the folder's owner and group; no special bit anywhere.
    assert_eq!(owned(&dst.join("bin/tool")), (0o755, 1234, 1235));
    assert_eq!(
        std::fs::read(dst.join("bin/tool")).unwrap(),
        b"#!/bin/sh\nid\n"
    );
    assert_eq!(owned(&dst.join("bin")), (0o755, 1234, 1235));
    assert_eq!(owned(&dst.join("shared")), (0o777, 1234, 1235));
    assert_eq!(owned(&dst.join("sip.conf")), (0o640, 1234, 1235));
    assert_eq!(owned(&dst.join("legacy")).0, 0o755);
    // Configured: owner by name, group by id.
    assert_eq!(
        owned(&dst2.join("vm/1001/msg0000.txt")),
        (0o644, nuid, 4321)
    );
    assert_eq!(owned(&dst2.join("vm/1001")), (0o755, nuid, 4321));
    // The Main sends modes without special bits too: nothing is left to
    // change, so the next push sends nothing.
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.matches("0 files, 0 bytes, 0 deleted").count() == 2,
        "{out}"
    );
}

/// One session of `frames` (after Hello); the Standby's answer: (kind, text).
async fn session(port: u16, pki: &Path, frames: &[(u8, Vec<u8>)]) -> (u8, String) {
    let mut s = main_session(("127.0.0.1", port), pki).await.unwrap();
    let (kind, _) = read_frame(&mut s).await.unwrap();
    assert_eq!(kind, 2, "expected the manifest");
    for (k, body) in frames {
        // The Standby may stop reading at the first refusal.
        if frame(&mut s, *k, body).await.is_err() {
            break;
        }
    }
    let _ = frame(&mut s, 7, b"{}").await;
    let (kind, body) = tokio::time::timeout(secs(30), read_frame(&mut s))
        .await
        .expect("the standby answers")
        .unwrap();
    (kind, String::from_utf8_lossy(&body).into_owned())
}

fn op(json: serde_json::Value) -> (u8, Vec<u8>) {
    (6, serde_json::to_vec(&json).unwrap())
}

/// Everything under `p`: relative path → (content or link target, mode, mtime).
fn snapshot(p: &Path) -> Vec<(String, Vec<u8>, u32, i64)> {
    walkdir::WalkDir::new(p)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            let body = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (e.path().display().to_string(), body, m.mode(), m.mtime())
        })
        .collect()
}

#[test]
fn a_compromised_main_cannot_reach_outside_the_folder() {
    let _g = serial();
    let d = TestDir::new("trust-escape-paths");
    let (src, dst) = (d.path("main-etc"), d.path("standby-etc"));
    write(&src, "sip.conf", b"[general]\n", 0o644);
    // Outside the Standby's folder, beside it: what must not change.
    let outside = d.path("outside");
    write(&outside, "secret", b"s3cret", 0o600);
    write(&dst, "plain", b"a file where a folder is asked for", 0o644);
    let before = snapshot(&outside);
    let (p, port) = trust_pair(
        "trust-escape",
        [dir_job("etc", &src, ""), dir_job("etc", &dst, "")],
    );
    let pid = p.nodes[STANDBY].as_ref().map(|n| n.pid()).unwrap_or(0);
    let pki = p.dir.path("pki");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let chain = || {
        vec![
            op(serde_json::json!({"op": "dir", "path": "a", "mode": 0o755})),
            op(serde_json::json!({"op": "dir", "path": "a/b", "mode": 0o755})),
            op(serde_json::json!({"op": "symlink", "path": "a/b/l1", "target": ".."})),
        ]
    };
    let private = [d.0.display().to_string(), p.dir.0.display().to_string()];
    let no_leak = |text: &str| {
        for path in &private {
            assert!(
                !text.contains(path),
                "the answer names a local path: {text}"
            );
        }
        assert!(
            !text.contains(&format!("tmp.{pid}")),
            "the answer names the daemon's pid: {text}"
        );
    };
    // 1. The chain that is inside by its text and outside by resolution,
    //    then a chmod through it.
    let mut frames = chain();
    frames.push(op(serde_json::json!({
        "op": "symlink", "path": "esc", "target": "a/b/l1/../../outside/secret"
    })));
    frames.push(op(serde_json::json!({
        "op": "meta", "path": "esc", "mode": 0o4777, "mtime_ns": 0
    })));
    let (kind, text) = rt.block_on(session(port, &pki, &frames));
    assert_eq!(kind, 8, "the escaping link was accepted: {text}");
    assert!(text.contains("refused symlink"), "{text}");
    no_leak(&text);
    assert!(dst.join("esc").symlink_metadata().is_err());

    // 2. A link planted at the name the Standby would write a file to.
    let mut frames = chain();
    frames.push(op(serde_json::json!({
        "op": "symlink",
        "path": format!(".f.resilience-tmp.{pid}"),
        "target": "a/b/l1/../../outside/victim"
    })));
    let body = b"evil";
    frames.push((
        3,
        serde_json::to_vec(&serde_json::json!({
            "path": "f", "size": body.len(), "mode": 0o644, "mtime_ns": 0
        }))
        .unwrap(),
    ));
    frames.push((4, body.to_vec()));
    frames.push((
        5,
        serde_json::to_vec(&serde_json::json!({"hash": blake3::hash(body).to_hex().to_string()}))
            .unwrap(),
    ));
    let (kind, text) = rt.block_on(session(port, &pki, &frames));
    assert_eq!(kind, 8, "the planted link was accepted: {text}");
    // (The answer quotes the name the sender chose, pid included.)
    assert!(text.contains("refused symlink"), "{text}");
    for path in &private {
        assert!(
            !text.contains(path),
            "the answer names a local path: {text}"
        );
    }

    // 3. A failing write names the job-relative path only.
    let frames = vec![(
        3,
        br#"{"path":"plain/x","size":1,"mode":420,"mtime_ns":0}"#.to_vec(),
    )];
    let (kind, text) = rt.block_on(session(port, &pki, &frames));
    assert_eq!(kind, 8, "{text}");
    assert!(text.contains("plain/x"), "{text}");
    no_leak(&text);

    // Nothing outside changed: same entries, contents, modes and times.
    assert_eq!(snapshot(&outside), before, "{}", p.logs());
    // And an honest push still makes the Standby the Main's copy.
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}\n{}", p.logs());
    assert!(dst.join("sip.conf").exists());
    assert!(!dst.join("a").exists() && !dst.join("plain").exists());
}

#[test]
fn escaping_links_on_the_main_are_not_sent_and_are_reported() {
    let _g = serial();
    let d = TestDir::new("trust-links-paths");
    let (src, dst) = (d.path("main-etc"), d.path("standby-etc"));
    write(&src, "a/b/f.conf", b"x", 0o644);
    write(&d.0, "secret-main", b"main's secret", 0o600);
    // Planted by a local user on the Main: out by resolution, out by text,
    // absolute; and links that stay inside.
    let link = |t: &str, at: &str| std::os::unix::fs::symlink(t, src.join(at)).unwrap();
    link("..", "a/b/l1");
    link("a/b/l1/../../secret-main", "esc");
    link("../secret-main", "up");
    link("/etc/passwd", "abs");
    link("a/b/f.conf", "ok");
    let (p, _) = trust_pair(
        "trust-links",
        [dir_job("etc", &src, ""), dir_job("etc", &dst, "")],
    );
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}\n{}", p.logs());
    for gone in ["esc", "up", "abs"] {
        assert!(
            dst.join(gone).symlink_metadata().is_err(),
            "{gone} reached the standby"
        );
    }
    assert_eq!(
        std::fs::read_link(dst.join("ok")).unwrap(),
        Path::new("a/b/f.conf")
    );
    assert_eq!(
        std::fs::read_link(dst.join("a/b/l1")).unwrap(),
        Path::new("..")
    );
    let st = p.status(MAIN);
    assert_eq!(
        st["replication"]["jobs"]["etc"]["links_skipped"].as_u64(),
        Some(3),
        "{st:#}"
    );
    // Told once, not at every push.
    replicate(&p);
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}");
    let events = get(&p.url(MAIN, "/api/v1/events?limit=100"))
        .unwrap()
        .to_string();
    assert_eq!(
        events.matches("3 symlink(s) not sent").count(),
        1,
        "{events}"
    );
    assert!(events.contains("abs, esc, up"), "{events}");
}
