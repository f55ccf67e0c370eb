//! End-to-end replication: two real nodes, folders pushed Main → Standby over
//! TLS under a cluster CA made with `resilience cert`.

mod common;

use common::repl::{frame, raw_session, read_frame};
use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A pair whose nodes replicate folder `<name>-etc` as job "etc".
fn replicating_pair(test: &str) -> (Pair, [u16; 2]) {
    pair_with(test, |_, name, p| {
        let folder = p.dir.path(&format!("{name}-etc"));
        std::fs::create_dir_all(&folder).unwrap();
        format!(
            "\n[[replication.dir]]\nname = \"etc\"\npath = \"{}\"\nexclude = [\"*.swp\"]\n",
            folder.display()
        )
    })
}

/// A pair with a cluster CA and a `[replication]` section; `jobs` gives each
/// node's job tables (node index, node name, pair).
fn pair_with(test: &str, jobs: impl Fn(usize, &str, &Pair) -> String) -> (Pair, [u16; 2]) {
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
    let ports = [p.tcp(0), p.tcp(1)];
    for i in 0..2 {
        let name = p.specs[i].name.clone();
        let extra = jobs(i, &name, &p);
        p.specs[i].extra = format!(
            "\n[replication]\nlisten = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\nca = \"{pki_s}/ca.pem\"\ncert = \"{pki_s}/{name}.crt\"\nkey = \"{pki_s}/{name}.key\"\ndebounce = \"300ms\"\n{extra}",
            ports[i],
            ports[1 - i],
        );
        std::fs::write(p.config_path(i), p.specs[i].config(&p.dir.0)).unwrap();
    }
    (p, ports)
}

#[derive(Debug, PartialEq)]
enum Node {
    File {
        content: Vec<u8>,
        mode: u32,
        mtime: i64,
    },
    Dir {
        mode: u32,
    },
    Link(String),
}

fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let m = e.path().symlink_metadata().unwrap();
        let node = if m.file_type().is_symlink() {
            Node::Link(std::fs::read_link(e.path()).unwrap().display().to_string())
        } else if m.is_dir() {
            Node::Dir {
                mode: m.mode() & 0o7777,
            }
        } else {
            Node::File {
                content: std::fs::read(e.path()).unwrap(),
                mode: m.mode() & 0o7777,
                mtime: m.mtime(),
            }
        };
        out.insert(rel, node);
    }
    out
}

fn replicate(p: &Pair) -> (i32, String, String) {
    cli(&[
        "replicate",
        "--config",
        p.config_path(MAIN).to_str().unwrap(),
    ])
}

fn write(root: &Path, rel: &str, body: &[u8]) {
    let f = root.join(rel);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, body).unwrap();
}

#[test]
fn folders_replicate_with_deletions_renames_links_and_modes() {
    let _g = serial();
    let (mut p, _) = replicating_pair("repl-tree");
    let src = p.dir.path("pbx-main-etc");
    let dst = p.dir.path("pbx-standby-etc");
    write(&src, "a/b/c.conf", b"[general]\ncontext=default\n");
    write(&src, "a/x.txt", b"x");
    write(&src, "top.txt", b"top");
    write(&src, "script.sh", b"#!/bin/sh\necho hi\n");
    write(&src, "editor.swp", b"excluded");
    std::fs::set_permissions(
        src.join("script.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("a/x.txt", src.join("link")).unwrap();
    // Something on the Standby that the Main does not have goes away.
    write(&dst, "stale/old.conf", b"old");
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}\n{}", p.logs());
    let mut want = tree(&src);
    want.remove("editor.swp");
    assert_eq!(tree(&dst), want);

    // Delete, rename, chmod, edit; then sync again.
    std::fs::remove_file(src.join("top.txt")).unwrap();
    std::fs::rename(src.join("a/x.txt"), src.join("a/y.txt")).unwrap();
    std::fs::set_permissions(
        src.join("script.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::write(src.join("a/b/c.conf"), b"[general]\ncontext=internal\n").unwrap();
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}");
    let mut want = tree(&src);
    want.remove("editor.swp");
    assert_eq!(tree(&dst), want);
    assert!(out.contains("etc:"), "{out}");

    // Nothing changed: nothing sent.
    let (code, out, _) = replicate(&p);
    assert_eq!(code, 0);
    assert!(out.contains("0 files, 0 bytes, 0 deleted"), "{out}");
    let st = p.status(STANDBY);
    assert_eq!(
        st["replication"]["jobs"]["etc"]["role"], "receive",
        "{st:#}"
    );
    assert!(
        st["replication"]["jobs"]["etc"]["last_success_ms"].is_number(),
        "{st:#}"
    );
    let st = p.status(MAIN);
    assert!(
        st["replication"]["jobs"]["etc"]["stale_s"]
            .as_f64()
            .unwrap()
            < 60.0,
        "{st:#}"
    );
}

#[test]
fn a_push_killed_mid_stream_leaves_no_truncated_file() {
    let _g = serial();
    let (mut p, _) = replicating_pair("repl-cut");
    let src = p.dir.path("pbx-main-etc");
    let dst = p.dir.path("pbx-standby-etc");
    let old = vec![b'o'; 1 << 20];
    write(&dst, "big.bin", &old);
    let new: Vec<u8> = (0..(600u32 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
        .collect();
    write(&src, "big.bin", &new);
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());
    let cfg = p.config_path(MAIN).display().to_string();
    let push = std::thread::spawn(move || cli(&["replicate", "--config", &cfg]));
    // Kill the Main once the Standby has received part of the file: poll
    // tightly, the transfer runs at loopback speed.
    let end = std::time::Instant::now() + secs(30);
    let mut cut_at = None;
    while std::time::Instant::now() < end && cut_at.is_none() {
        for e in std::fs::read_dir(&dst).unwrap().flatten() {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if e.file_name().to_string_lossy().contains(".resilience-tmp.")
                && len > 0
                && len < new.len() as u64 / 2
            {
                p.kill(MAIN);
                cut_at = Some(len);
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(
        cut_at.is_some(),
        "transfer never seen mid-way\n{}",
        p.logs()
    );
    let (code, _, _) = push.join().unwrap();
    assert_ne!(
        code, 0,
        "the push finished before the kill: make the file bigger"
    );
    std::thread::sleep(Duration::from_millis(500));
    let got = std::fs::read(dst.join("big.bin")).unwrap();
    assert!(
        got == old || got == new,
        "big.bin is neither old nor new ({} bytes)",
        got.len()
    );
    assert_eq!(got.len(), old.len(), "the cut transfer replaced the file");
    // The Main comes back, takes the service back, and the next push completes
    // and clears the temporary.
    p.start(MAIN);
    assert!(
        wait_until(secs(15), || p.active(MAIN) == Some(true)
            && p.active(STANDBY) == Some(false)),
        "{}",
        p.logs()
    );
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::read(dst.join("big.bin")).unwrap() == new);
    let left: Vec<_> = std::fs::read_dir(&dst)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn a_malicious_stream_and_a_foreign_ca_are_refused() {
    let _g = serial();
    let (mut p, ports) = replicating_pair("repl-evil");
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());
    let pki = p.dir.path("pki");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A holder of a real Main certificate tries to write outside the folder.
    rt.block_on(async {
        let mut s = raw_session(
            ("127.0.0.1", ports[STANDBY]),
            &pki.join("ca.pem"),
            &pki.join("pbx-main.crt"),
            &pki.join("pbx-main.key"),
        )
        .await
        .unwrap();
        let (kind, _) = read_frame(&mut s).await.unwrap();
        assert_eq!(kind, 2, "expected the manifest");
        frame(
            &mut s,
            3,
            br#"{"path":"../evil","size":4,"mode":420,"mtime_ns":0}"#,
        )
        .await
        .unwrap();
        frame(&mut s, 4, b"evil").await.ok();
        let (kind, body) = read_frame(&mut s).await.unwrap();
        assert_eq!(kind, 8, "expected an error, got {kind}");
        assert!(
            String::from_utf8_lossy(&body).contains("leaves the replicated folder"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    });
    assert!(!p.dir.path("evil").exists());
    assert!(!p.dir.0.parent().unwrap().join("evil").exists());

    // A certificate from another CA is refused, and the refusal is logged.
    let other = p.dir.path("other-pki");
    let o = other.display().to_string();
    assert_eq!(cli(&["cert", "init", "--dir", &o]).0, 0);
    assert_eq!(cli(&["cert", "issue", "pbx-main", "--dir", &o]).0, 0);
    rt.block_on(async {
        let r = raw_session(
            ("127.0.0.1", ports[STANDBY]),
            &pki.join("ca.pem"),
            &other.join("pbx-main.crt"),
            &other.join("pbx-main.key"),
        )
        .await;
        let refused = match r {
            Err(_) => true,
            Ok(mut s) => read_frame(&mut s).await.is_err(),
        };
        assert!(refused, "a foreign certificate got a session");
    });
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(p.dir.path("pbx-standby.log")).unwrap();
    assert!(log.contains("replication: refused connection"), "{log}");

    // A certificate of the cluster CA for another host (a follower's) gets
    // through TLS but not to the folder: only the peer node pushes.
    let pk = pki.display().to_string();
    assert_eq!(cli(&["cert", "issue", "cc-follower", "--dir", &pk]).0, 0);
    rt.block_on(async {
        let r = raw_session(
            ("127.0.0.1", ports[STANDBY]),
            &pki.join("ca.pem"),
            &pki.join("cc-follower.crt"),
            &pki.join("cc-follower.key"),
        )
        .await;
        let refused = match r {
            Err(_) => true,
            Ok(mut s) => read_frame(&mut s).await.is_err(),
        };
        assert!(refused, "a follower's certificate got a session");
    });
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(p.dir.path("pbx-standby.log")).unwrap();
    assert!(log.contains("its certificate is not pbx-main's"), "{log}");

    // And no push lands on a Standby that serves.
    p.kill(MAIN);
    assert!(wait_until(secs(10), || p.active(STANDBY) == Some(true)));
    rt.block_on(async {
        let mut s = raw_session(
            ("127.0.0.1", ports[STANDBY]),
            &pki.join("ca.pem"),
            &pki.join("pbx-main.crt"),
            &pki.join("pbx-main.key"),
        )
        .await
        .unwrap();
        let (kind, body) = read_frame(&mut s).await.unwrap();
        assert_eq!(kind, 8);
        assert!(
            String::from_utf8_lossy(&body).contains("active"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    });
}

/// Pushed only by `replicate` (no push on commit): each push is the test's.
fn pg_job(pg: &Postgres) -> String {
    format!(
        "\n[[replication.postgres]]\nname = \"asterisk\"\ndatabase = \"asterisk\"\nhost = \"{}\"\nport = {}\nexclude_tables = [\"cel\"]\nreport_tables = [\"users\"]\nwatch = false\n",
        pg.host, pg.port
    )
}

fn names(pg: &Postgres) -> String {
    pg.sql(
        "asterisk",
        "SELECT string_agg(name, ',' ORDER BY id) FROM users",
    )
}

#[test]
fn postgres_replicates_keeps_excluded_rows_and_never_half_restores() {
    let _g = serial();
    let dir = TestDir::new("repl-pg-servers");
    let pgs = [
        Postgres::start(&dir.0, "main"),
        Postgres::start(&dir.0, "standby"),
    ];
    let schema = "CREATE TABLE users(id int PRIMARY KEY, name text NOT NULL);
                  CREATE TABLE cel(id serial PRIMARY KEY, event text NOT NULL);";
    for (pg, who) in pgs.iter().zip(["main", "standby"]) {
        pg.sql("postgres", "CREATE DATABASE asterisk");
        pg.sql("asterisk", schema);
        pg.sql(
            "asterisk",
            &format!("INSERT INTO cel(event) VALUES ('{who}-call-1'), ('{who}-call-2')"),
        );
    }
    pgs[MAIN].sql(
        "asterisk",
        "INSERT INTO users VALUES (1, 'alice'), (2, 'bob'), (3, 'carol')",
    );
    pgs[STANDBY].sql("asterisk", "INSERT INTO users VALUES (1, 'stale')");
    let (mut p, _) = pair_with("repl-pg", |i, _, _| pg_job(&pgs[i]));
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());

    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}\n{}", p.logs());
    assert_eq!(names(&pgs[STANDBY]), "alice,bob,carol");
    // Excluded rows: not copied, and the Standby's own kept.
    assert_eq!(
        pgs[STANDBY].sql(
            "asterisk",
            "SELECT string_agg(event, ',' ORDER BY id) FROM cel"
        ),
        "standby-call-1,standby-call-2"
    );
    let st = p.status(STANDBY);
    assert_eq!(
        st["replication"]["jobs"]["asterisk"]["kind"], "postgres",
        "{st:#}"
    );
    assert!(st["replication"]["jobs"]["asterisk"]["last_success_ms"].is_number());

    // A restore that fails (an owner the Standby does not have) leaves the
    // Standby's database as it was, and no staging copy behind.
    pgs[MAIN].sql(
        "asterisk",
        "CREATE ROLE only_on_main; CREATE TABLE extra(x int); ALTER TABLE extra OWNER TO only_on_main;
         UPDATE users SET name = upper(name)",
    );
    let (code, out, err) = replicate(&p);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("pg_restore"), "{err}");
    assert_eq!(names(&pgs[STANDBY]), "alice,bob,carol");
    let leftovers = "SELECT count(*) FROM pg_database WHERE datname LIKE '%resilience%'";
    assert_eq!(pgs[STANDBY].sql("postgres", leftovers), "0");
    let st = p.status(MAIN);
    assert!(
        st["replication"]["jobs"]["asterisk"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("only_on_main")),
        "{st:#}"
    );
    pgs[STANDBY].sql("postgres", "CREATE ROLE only_on_main");

    // A restore cut halfway: the Standby's daemon is killed while
    // pg_restore fills the staging copy. The database in service stays the
    // old one; the next session drops the leftover and completes.
    pgs[MAIN].sql(
        "asterisk",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v
           FROM generate_series(1, 600000) g;
         ALTER TABLE big ADD PRIMARY KEY (id); CREATE INDEX ON big(v);",
    );
    let cfg = p.config_path(MAIN).display().to_string();
    let push = std::thread::spawn(move || cli(&["replicate", "--config", &cfg]));
    let staging = "SELECT count(*) FROM pg_database WHERE datname = 'asterisk__resilience_staging'";
    let seen = wait_until(secs(60), || {
        pgs[STANDBY].try_sql("postgres", staging).as_deref() == Ok("1")
    });
    assert!(seen, "the restore never started\n{}", p.logs());
    p.kill(STANDBY);
    let (code, _, _) = push.join().unwrap();
    assert_ne!(code, 0, "the push finished before the cut");
    assert_eq!(names(&pgs[STANDBY]), "alice,bob,carol");
    assert!(pgs[STANDBY]
        .try_sql("asterisk", "SELECT 1 FROM big")
        .is_err());
    p.start(STANDBY);
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}\n{}", p.logs());
    assert_eq!(names(&pgs[STANDBY]), "ALICE,BOB,CAROL");
    assert_eq!(
        pgs[STANDBY].sql("asterisk", "SELECT count(*) FROM big"),
        "600000"
    );
    assert_eq!(pgs[STANDBY].sql("postgres", leftovers), "0");
    assert_eq!(
        pgs[STANDBY].sql("asterisk", "SELECT count(*) FROM cel"),
        "2",
        "the Standby's own call logs survive every restore"
    );
}

#[test]
fn sqlite_snapshot_is_consistent_while_a_writer_is_busy() {
    let _g = serial();
    let (mut p, _) = pair_with("repl-sqlite", |_, name, p| {
        format!(
            "\n[[replication.sqlite]]\nname = \"astdb\"\npath = \"{}\"\n",
            p.dir.path(&format!("{name}-astdb.sqlite3")).display()
        )
    });
    let src = p.dir.path("pbx-main-astdb.sqlite3");
    let dst = p.dir.path("pbx-standby-astdb.sqlite3");
    let c = rusqlite::Connection::open(&src).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE astdb(key TEXT PRIMARY KEY, value TEXT);",
    )
    .unwrap();
    drop(c);
    // A writer commits ten rows per transaction, as fast as it can.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = rusqlite::Connection::open(&src).unwrap();
            c.busy_timeout(secs(10)).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = c.transaction().unwrap();
                for _ in 0..10 {
                    t.execute(
                        "INSERT INTO astdb VALUES (?1, ?2)",
                        (format!("/SIP/{n}"), "x".repeat(200)),
                    )
                    .unwrap();
                    n += 1;
                }
                t.commit().unwrap();
            }
            n
        })
    };
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());
    let mut last = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let (code, out, err) = replicate(&p);
        assert_eq!(code, 0, "{out}{err}\n{}", p.logs());
        let c = rusqlite::Connection::open(&dst).unwrap();
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let n: i64 = c
            .query_row("SELECT count(*) FROM astdb", [], |r| r.get(0))
            .unwrap();
        assert!(n > last, "{n} rows after {last}");
        assert_eq!(n % 10, 0, "a snapshot holds half a transaction: {n} rows");
        last = n;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written as i64 > last);
    for side in ["-wal", "-shm"] {
        assert!(!p
            .dir
            .path(&format!("pbx-standby-astdb.sqlite3{side}"))
            .exists());
    }
}

#[test]
fn watched_folder_is_pushed_and_failback_reports_local_changes() {
    let _g = serial();
    let (mut p, _) = pair_with("repl-watch", |_, name, p| {
        let folder = p.dir.path(&format!("{name}-etc"));
        std::fs::create_dir_all(&folder).unwrap();
        format!(
            "keep_on_failback = [\"etc/voicemail\"]\n\n[[replication.dir]]\nname = \"etc\"\npath = \"{}\"\nwatch = true\n",
            folder.display()
        )
    });
    let src = p.dir.path("pbx-main-etc");
    let dst = p.dir.path("pbx-standby-etc");
    write(&src, "sip.conf", b"[general]\n");
    write(&src, "users/1001.conf", b"secret=a\n");
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());
    // No `replicate`: the change alone is pushed, once the folder is quiet.
    write(
        &src,
        "extensions.conf",
        b"[default]\nexten => 1001,1,Dial(SIP/1001)\n",
    );
    assert!(
        wait_until(secs(15), || std::fs::read(dst.join("extensions.conf"))
            .is_ok()
            && std::fs::read(dst.join("users/1001.conf")).is_ok()),
        "the watched change was not pushed\n{}",
        p.logs()
    );

    // Failover; the admin edits on the Standby while it serves.
    p.kill(MAIN);
    assert!(wait_until(secs(10), || p.active(STANDBY) == Some(true)));
    write(&dst, "users/1001.conf", b"secret=changed-during-failover\n");
    write(&dst, "users/1002.conf", b"secret=new\n");
    write(
        &dst,
        "voicemail/1001/msg0001.txt",
        b"a message left during the failover",
    );
    // The Main returns and takes the service back (policy immediate): the
    // Standby reports what the next replication will overwrite.
    p.start(MAIN);
    assert!(
        wait_until(secs(20), || p.active(MAIN) == Some(true)
            && p.active(STANDBY) == Some(false)),
        "{}",
        p.logs()
    );
    let report = || p.status(STANDBY)["replication"]["local_changes_at_failback"].clone();
    assert!(
        wait_until(secs(10), || report().is_object()),
        "{}",
        p.logs()
    );
    let r = report();
    let etc = &r["jobs"][0];
    assert_eq!(etc["job"], "etc", "{r:#}");
    assert_eq!(etc["changed"].as_u64(), Some(1), "{r:#}");
    assert_eq!(etc["deleted"].as_u64(), Some(0), "{r:#}");
    let paths = etc["paths"].to_string();
    assert!(paths.contains("changed users/1001.conf"), "{paths}");
    assert!(paths.contains("added users/1002.conf"), "{paths}");
    // keep_on_failback: the voicemail left on the Standby is on the Main.
    assert_eq!(
        r["kept"],
        serde_json::json!(["etc/voicemail/1001/msg0001.txt"]),
        "{r:#}"
    );
    assert_eq!(
        std::fs::read(src.join("voicemail/1001/msg0001.txt")).unwrap(),
        b"a message left during the failover"
    );
    let events = get(&p.url(STANDBY, "/api/v1/events?limit=50")).unwrap();
    assert!(
        events
            .to_string()
            .contains("changed on this standby while it was active"),
        "{events:#}"
    );
    // The next replication makes the Standby the Main's copy again.
    let (code, out, err) = replicate(&p);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read(dst.join("users/1001.conf")).unwrap(),
        b"secret=a\n"
    );
    assert!(!dst.join("users/1002.conf").exists());
    assert!(dst.join("voicemail/1001/msg0001.txt").exists());
}
