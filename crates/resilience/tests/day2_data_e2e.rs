//! Day 2: failover data comes home before the Main serves again, and a
//! database change reaches the Standby within seconds. Real nodes, real
//! TLS replication, real PostgreSQL.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A pair with a cluster CA and a `[replication]` table; `jobs` gives each
/// node's jobs and extra tables (node index, node name, pair).
fn replicating_pair(
    test: &str,
    failback: &str,
    jobs: impl Fn(usize, &str, &Pair) -> String,
) -> Pair {
    let mut p = Pair::new(test, "automatic", failback, false);
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
        p.set_extra(
            i,
            format!(
                "\n[replication]\nlisten = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\nca = \"{pki_s}/ca.pem\"\ncert = \"{pki_s}/{name}.crt\"\nkey = \"{pki_s}/{name}.key\"\ndebounce = \"300ms\"\n{extra}",
                ports[i],
                ports[1 - i],
            ),
        );
    }
    p
}

const VOICEMAIL: &str = "voicemail/1001/msg0001.txt";

/// Both nodes replicate `<name>-spool` as job "spool" and keep its
/// voicemail at failback; each node's services record, at every start,
/// whether the voicemail message is on this node (`<name>.starts`).
fn voicemail_pair(test: &str, failback: &str) -> Pair {
    replicating_pair(test, failback, |_, name, p| {
        let folder = p.dir.path(&format!("{name}-spool"));
        std::fs::create_dir_all(&folder).unwrap();
        let msg = folder.join(VOICEMAIL);
        let log = p.dir.path(&format!("{name}.starts"));
        format!(
            "keep_on_failback = [\"spool/voicemail\"]\n\n[[replication.dir]]\nname = \"spool\"\npath = \"{}\"\n\n[[service]]\nname = \"voicemail-check\"\nstart = \"if test -f {msg}; then echo present >> {log}; else echo missing >> {log}; fi\"\nstop = \"true\"\n",
            folder.display(),
            msg = msg.display(),
            log = log.display(),
        )
    })
}

fn spool(p: &Pair, i: usize) -> PathBuf {
    p.dir.path(&format!("{}-spool", p.specs[i].name))
}

fn starts(p: &Pair, i: usize) -> Vec<String> {
    std::fs::read_to_string(p.dir.path(&format!("{}.starts", p.specs[i].name)))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write(root: &Path, rel: &str, body: &[u8]) {
    let f = root.join(rel);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, body).unwrap();
}

/// The Main fails over to the Standby, which records a voicemail while it
/// serves.
fn fail_over_and_leave_a_message(p: &mut Pair) {
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());
    assert_eq!(starts(p, MAIN), ["missing"]);
    p.kill(MAIN);
    assert!(wait_until(secs(10), || p.running(STANDBY)), "{}", p.logs());
    write(
        &spool(p, STANDBY),
        VOICEMAIL,
        b"a message left during the failover",
    );
}

fn events(p: &Pair, i: usize) -> String {
    get(&p.url(i, "/api/v1/events?limit=200"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn failback_starts_the_main_only_once_the_kept_voicemail_is_on_it() {
    let _g = serial();
    let mut p = voicemail_pair(
        "day2-keep",
        "policy = \"immediate\"\ndata_wait = \"20s\"\non_data_failure = \"hold\"",
    );
    fail_over_and_leave_a_message(&mut p);
    // The Main returns (policy immediate): it fetches the message, then asks
    // for the service; the Standby drains and stops; the Main starts.
    p.start(MAIN);
    assert!(
        wait_until(secs(30), || p.running(MAIN)
            && p.active(STANDBY) == Some(false)),
        "{}",
        p.logs()
    );
    // Its services started with the message already on it (and checked:
    // the same bytes).
    assert_eq!(starts(&p, MAIN), ["missing", "present"], "{}", p.logs());
    assert_eq!(
        std::fs::read(spool(&p, MAIN).join(VOICEMAIL)).unwrap(),
        b"a message left during the failover"
    );
    let ev = events(&p, MAIN);
    let ready = ev.find("failback data copied back").expect(&ev);
    let asked = ev.find("failback requested").expect(&ev);
    // Newest first: the request comes after the copy.
    assert!(asked < ready, "{ev}");
    // The Standby's failback report names the message it kept.
    let report = || p.status(STANDBY)["replication"]["local_changes_at_failback"].clone();
    assert!(
        wait_until(secs(10), || report().is_object()),
        "{}",
        p.logs()
    );
    assert_eq!(
        report()["kept"],
        serde_json::json!(["spool/voicemail/1001/msg0001.txt"]),
        "{:#}",
        report()
    );
}

#[test]
fn a_failed_copy_holds_the_failback_with_the_reason_until_it_succeeds() {
    let _g = serial();
    let mut p = voicemail_pair(
        "day2-hold",
        "policy = \"immediate\"\ndata_wait = \"20s\"\non_data_failure = \"hold\"",
    );
    fail_over_and_leave_a_message(&mut p);
    // On the Main, a file where the voicemail folder should be: the copy
    // cannot land.
    let main_spool = spool(&p, MAIN);
    std::fs::create_dir_all(&main_spool).unwrap();
    std::fs::write(main_spool.join("voicemail"), b"not a folder").unwrap();
    p.start(MAIN);
    let waiting = || {
        p.status(MAIN)["failback"]["waiting_because"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        wait_until(secs(20), || waiting().contains("failback held")),
        "{}",
        p.logs()
    );
    let why = waiting();
    assert!(why.contains("keep_on_failback"), "{why}");
    // Held through several tries (each one a failed session in the
    // Standby's log): the Standby keeps serving, the Main neither asks nor
    // starts.
    let tries = || {
        std::fs::read_to_string(p.dir.path("pbx-standby.log"))
            .unwrap_or_default()
            .matches("session from")
            .count()
    };
    assert!(wait_until(secs(20), || tries() >= 3), "{}", p.logs());
    assert_eq!(p.active(STANDBY), Some(true), "{}", p.logs());
    assert_eq!(p.active(MAIN), Some(false));
    assert_eq!(p.status(MAIN)["failback"]["requested"], false);
    assert_eq!(starts(&p, MAIN), ["missing"]);
    assert!(events(&p, MAIN).contains("FAILBACK DATA NOT COPIED BACK"));
    // The admin clears the way; the next try succeeds and failback goes on.
    std::fs::remove_file(main_spool.join("voicemail")).unwrap();
    assert!(
        wait_until(secs(30), || p.running(MAIN)
            && p.active(STANDBY) == Some(false)),
        "{}",
        p.logs()
    );
    assert_eq!(starts(&p, MAIN), ["missing", "present"]);
}

#[test]
fn a_row_committed_on_the_main_is_on_the_standby_within_seconds() {
    let _g = serial();
    let dir = TestDir::new("day2-pg-servers");
    let pgs = [
        Postgres::start(&dir.0, "main"),
        Postgres::start(&dir.0, "standby"),
    ];
    for pg in &pgs {
        pg.sql("postgres", "CREATE DATABASE asterisk");
        pg.sql(
            "asterisk",
            "CREATE TABLE users(id int PRIMARY KEY, name text NOT NULL);
             CREATE TABLE cel(id serial PRIMARY KEY, event text NOT NULL);",
        );
    }
    let mut p = replicating_pair("day2-pg", "policy = \"immediate\"", |i, _, _| {
        format!(
            "\n[[replication.postgres]]\nname = \"asterisk\"\ndatabase = \"asterisk\"\nhost = \"{}\"\nport = {}\nexclude_tables = [\"cel\"]\nwatch_poll = \"200ms\"\n",
            pgs[i].host, pgs[i].port
        )
    });
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());
    let on_standby = |id: u32| {
        pgs[STANDBY]
            .try_sql(
                "asterisk",
                &format!("SELECT name FROM users WHERE id = {id}"),
            )
            .unwrap_or_default()
    };
    // No `replicate`, and the scheduled push is an hour away: the commit
    // alone is pushed.
    for (id, name) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        pgs[MAIN].sql(
            "asterisk",
            &format!("INSERT INTO users VALUES ({id}, '{name}')"),
        );
        assert!(
            wait_until(secs(30), || on_standby(id) == name),
            "row {id} never reached the standby\n{}",
            p.logs()
        );
    }
    pgs[MAIN].sql("asterisk", "UPDATE users SET name = 'ALICE' WHERE id = 1");
    assert!(
        wait_until(secs(30), || on_standby(1) == "ALICE"),
        "{}",
        p.logs()
    );
    // Writes to an excluded table alone (call logs) push nothing.
    let pushes = || {
        p.status(MAIN)["replication"]["jobs"]["asterisk"]["last_success_ms"]
            .as_i64()
            .unwrap_or(0)
    };
    let before = pushes();
    for k in 0..5 {
        pgs[MAIN].sql(
            "asterisk",
            &format!("INSERT INTO cel(event) VALUES ('call-{k}')"),
        );
    }
    // One marker row after them: its push is the first one after `before`.
    pgs[MAIN].sql("asterisk", "INSERT INTO users VALUES (4, 'dave')");
    assert!(
        wait_until(secs(30), || on_standby(4) == "dave"),
        "{}",
        p.logs()
    );
    // The Main records the push once the Standby's answer is back, a
    // moment after the row is visible there.
    assert!(
        wait_until(secs(10), || pushes() > before),
        "the marker's push was not recorded\n{}",
        p.logs()
    );
    assert_eq!(
        pgs[STANDBY].sql("asterisk", "SELECT count(*) FROM cel"),
        "0",
        "excluded rows are never copied"
    );
}

#[test]
fn failback_reports_what_changed_in_a_sqlite_job_on_the_standby() {
    let _g = serial();
    let mut p = replicating_pair("day2-sqlite", "policy = \"immediate\"", |_, name, p| {
        format!(
            "\n[[replication.sqlite]]\nname = \"astdb\"\npath = \"{}\"\n",
            p.dir.path(&format!("{name}-astdb.sqlite3")).display()
        )
    });
    let src = p.dir.path("pbx-main-astdb.sqlite3");
    let dst = p.dir.path("pbx-standby-astdb.sqlite3");
    rusqlite::Connection::open(&src)
        .unwrap()
        .execute_batch(
            "CREATE TABLE astdb(key TEXT PRIMARY KEY, value TEXT);
             INSERT INTO astdb VALUES ('/CF/1001', '1002'), ('/DND/1001', 'YES');",
        )
        .unwrap();
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());
    let (code, out, err) = cli(&[
        "replicate",
        "--config",
        p.config_path(MAIN).to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}\n{}", p.logs());
    // Failover; the admin changes a call forwarding on the Standby.
    p.kill(MAIN);
    assert!(wait_until(secs(10), || p.running(STANDBY)), "{}", p.logs());
    rusqlite::Connection::open(&dst)
        .unwrap()
        .execute("UPDATE astdb SET value = '1003' WHERE key = '/CF/1001'", [])
        .unwrap();
    p.start(MAIN);
    assert!(
        wait_until(secs(20), || p.running(MAIN)
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
    let astdb = r["jobs"]
        .as_array()
        .and_then(|j| j.iter().find(|j| j["job"] == "astdb"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(astdb["changed"].as_u64(), Some(1), "{r:#}");
    assert_eq!(
        astdb["paths"],
        serde_json::json!(["changed table astdb family CF"]),
        "{r:#}"
    );
    assert!(events(&p, STANDBY).contains("astdb family CF"));
}
