//! The PBX settings for fast failover, on copies of Asterisk config files
//! kept in `tests/fixtures/asterisk/`: applied as the node does it (the
//! `resilience pbx-settings` command runs the same code the node runs at
//! start), applied twice, restored, refused, and shown by a running node.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/asterisk")
        .join(name)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A test folder with `etc/<conf>` copied from the fixtures and a node
/// config naming it.
struct Setup {
    dir: TestDir,
    conf: PathBuf,
    line: PathBuf,
    cfg: PathBuf,
    fixture: PathBuf,
}

impl Setup {
    fn new(test: &str, conf: &str, driver: &str) -> Setup {
        let dir = TestDir::new(test);
        std::fs::create_dir_all(dir.path("etc/provd")).unwrap();
        let fixture = fixture(conf);
        let conf_path = dir.path(&format!("etc/{conf}"));
        std::fs::copy(&fixture, &conf_path).unwrap();
        let s = Setup {
            cfg: dir.path("node.toml"),
            line: dir.path("etc/provd/resilience-line.json"),
            conf: conf_path,
            fixture,
            dir,
        };
        s.write_config("main", driver);
        s
    }

    fn write_config(&self, node_type: &str, driver: &str) {
        let conf = self.conf.file_name().unwrap().to_str().unwrap();
        std::fs::write(
            &self.cfg,
            format!(
                r#"[node]
name = "pbx-main"
type = "{node_type}"
state_dir = "state"

[peer]
name = "pbx-standby"
address = "127.0.0.1:7401"

[pbx_settings]
reload = "echo reload >> reload.log"

[pbx_settings.sip_expiry]
driver = "{driver}"
file = "etc/{conf}"

[pbx_settings.provisioning]
file = "etc/provd/resilience-line.json"
main = "10.0.0.1:5060"
standby = "10.0.0.2:5061"
"#
            ),
        )
        .unwrap();
    }

    /// Run `resilience pbx-settings` from another folder than the config's.
    fn run(&self) -> (i32, String) {
        let (code, out, err) = cli(&["pbx-settings", "--config", self.cfg.to_str().unwrap()]);
        (code, format!("{out}{err}"))
    }

    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.dir.path("reload.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// The originals kept in the node's store.
    fn kept_originals(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path("state/pbx-settings"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "orig"))
            .collect()
    }

    /// Files in a folder that are not the ones we put there: temporaries.
    fn strays(&self, folder: &str) -> Vec<String> {
        std::fs::read_dir(self.dir.path(folder))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("resilience-"))
            .collect()
    }
}

fn enable_twice_then_disable(conf: &str, driver: &str) {
    let s = Setup::new(&format!("pbxset-{conf}"), conf, driver);

    // Enable as Main: the expiry values and the backup proxy.
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(written)"), "{out}");
    assert!(
        out.contains("resynchronize"),
        "no warning about phones: {out}"
    );
    let golden = fixture(&format!("{conf}.ha"));
    assert_eq!(
        String::from_utf8(read(&s.conf)).unwrap(),
        String::from_utf8(read(&golden)).unwrap(),
        "rendered {conf} differs from {}",
        golden.display()
    );
    let line: serde_json::Value = serde_json::from_slice(&read(&s.line)).unwrap();
    let raw = &line["raw_config"];
    assert_eq!(raw["sip_proxy_ip"], "10.0.0.1", "{line}");
    assert_eq!(raw["sip_registrar_ip"], "10.0.0.1", "{line}");
    assert_eq!(raw["sip_backup_proxy_ip"], "10.0.0.2", "{line}");
    assert_eq!(raw["sip_backup_proxy_port"], 5061, "{line}");
    assert_eq!(raw["sip_backup_registrar_ip"], "10.0.0.2", "{line}");
    assert_eq!(raw["sip_registration_expires"], 120, "{line}");
    assert_eq!(s.reloads(), 1);

    // Enable again: nothing written, nothing reloaded.
    let before = std::fs::metadata(&s.conf).unwrap();
    let line_before = std::fs::metadata(&s.line).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("(written)"), "{out}");
    assert_eq!(out.matches("(applied)").count(), 2, "{out}");
    let after = std::fs::metadata(&s.conf).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec()),
        "{conf} rewritten"
    );
    let line_after = std::fs::metadata(&s.line).unwrap();
    assert_eq!(line_before.ino(), line_after.ino(), "line file rewritten");
    assert_eq!(s.reloads(), 1, "reloaded for nothing");

    // HA disabled: the original back byte for byte, the line file (which
    // did not exist) gone, one reload.
    s.write_config("disabled", driver);
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("(restored)").count(), 2, "{out}");
    assert_eq!(read(&s.conf), read(&s.fixture), "{conf} not restored");
    assert!(!s.line.exists(), "provisioning file left behind");
    assert_eq!(s.reloads(), 2);
    // And disabling again is a no-op.
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(s.reloads(), 2);
    assert!(s.strays("etc").is_empty(), "{:?}", s.strays("etc"));
}

#[test]
fn chan_sip_enable_twice_disable() {
    enable_twice_then_disable("sip.conf", "chan_sip");
}

#[test]
fn chan_sip_with_crlf_and_no_final_newline() {
    enable_twice_then_disable("sip-crlf.conf", "chan_sip");
}

#[test]
fn pjsip_enable_twice_disable() {
    enable_twice_then_disable("pjsip.conf", "pjsip");
}

/// `chattr +i` makes a file that even root cannot replace; undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Immutable {
        let st = std::process::Command::new("chattr")
            .arg("+i")
            .arg(p)
            .status()
            .expect("chattr (e2fsprogs) must be installed: scripts/test.sh installs it");
        assert!(st.success(), "chattr +i {}", p.display());
        Immutable(p.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn an_unwritable_target_is_a_clear_error_and_left_untouched() {
    let s = Setup::new("pbxset-ro", "sip.conf", "chan_sip");
    let guard = Immutable::set(&s.conf);
    let (code, out) = s.run();
    assert_eq!(code, 1, "{out}");
    let shown = s.conf.display().to_string();
    assert!(
        out.contains(&format!("cannot write {shown}")) && out.contains("not permitted"),
        "{out}"
    );
    assert_eq!(read(&s.conf), read(&s.fixture), "original touched");
    assert!(s.strays("etc").is_empty(), "{:?}", s.strays("etc"));
    // The provisioning file could be written; the reload ran for it.
    assert!(s.line.exists());
    let kept = s.kept_originals();
    assert!(
        kept.is_empty(),
        "a copy kept for a change never made: {kept:?}"
    );
    drop(guard);

    // Writable again: the next run applies, and disabling restores the
    // original byte for byte (the failed attempt left no false record).
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("sip.conf") && out.contains("(written)"),
        "{out}"
    );
    s.write_config("disabled", "chan_sip");
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert_eq!(read(&s.conf), read(&s.fixture));
}

#[test]
fn a_file_edited_since_is_not_overwritten_by_the_restore() {
    let s = Setup::new("pbxset-edited", "sip.conf", "chan_sip");
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    let mut edited = read(&s.conf);
    edited.extend_from_slice(b"\n[1003](ipbx-template)\nsecret = added-by-the-admin\n");
    std::fs::write(&s.conf, &edited).unwrap();
    // Applying again leaves the edited file (it still has the HA values) alone.
    let (code, out) = s.run();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("still holds the HA settings"), "{out}");
    assert_eq!(read(&s.conf), edited);
    s.write_config("disabled", "chan_sip");
    let (code, out) = s.run();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("changed since Resilience wrote it"), "{out}");
    assert!(out.contains("the original is kept at"), "{out}");
    assert_eq!(read(&s.conf), edited, "the admin's edit was lost");
    // The original is still there to merge by hand.
    let kept = s.kept_originals();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(read(&kept[0]), read(&s.fixture));
}

#[test]
fn the_node_applies_at_start_and_lists_the_changes() {
    let _g = serial();
    let mut p = Pair::new("pbxset-node", "manual", "policy = \"manual\"", false);
    let etc = p.dir.path("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(fixture("pjsip.conf"), etc.join("pjsip.conf")).unwrap();
    p.set_extra(
        MAIN,
        format!(
        "[pbx_settings]\n[pbx_settings.sip_expiry]\ndriver = \"pjsip\"\nfile = \"{}/pjsip.conf\"\n",
        etc.display()
    ),
    );
    p.start(MAIN);
    let status = p.status(MAIN);
    let files = &status["pbx_settings"]["files"];
    assert_eq!(files[0]["state"], "written", "{status}");
    assert!(
        files[0]["what"]
            .as_str()
            .is_some_and(|w| w.contains("min 60s, max 300s, default 120s")),
        "{status}"
    );
    assert!(files[0]["original"].as_str().is_some(), "{status}");
    assert!(
        status["pbx_settings"]["warning"]
            .as_str()
            .is_some_and(|w| w.contains("resynchronize")),
        "{status}"
    );
    assert_eq!(
        read(&etc.join("pjsip.conf")),
        read(&fixture("pjsip.conf.ha"))
    );
    let events = get(&p.url(MAIN, "/api/v1/events?limit=100")).unwrap();
    assert!(
        events.to_string().contains("pbx settings:"),
        "not in the history: {events}"
    );
}

#[test]
fn a_file_regenerated_by_its_owner_becomes_the_new_original() {
    // XiVO rewrites sip.conf from its database: the next apply edits the
    // new file, and disabling gives back the new file, not the old one.
    let s = Setup::new("pbxset-regen", "sip.conf", "chan_sip");
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    let mut regenerated = read(&s.fixture);
    regenerated.extend_from_slice(b"\n[1003](ipbx-template)\nsecret = 1003-secret\n");
    std::fs::write(&s.conf, &regenerated).unwrap();
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("sip.conf") && out.contains("(written)"),
        "{out}"
    );
    let text = String::from_utf8(read(&s.conf)).unwrap();
    assert!(
        text.contains("maxexpiry = 300") && text.contains("[1003]"),
        "{text}"
    );
    s.write_config("disabled", "chan_sip");
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert_eq!(read(&s.conf), regenerated);
    // Nothing is deleted on a guess: the first original is still kept.
    let kept = s.kept_originals();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(read(&kept[0]), read(&s.fixture));
}

#[test]
fn a_failed_rewrite_after_a_config_change_loses_nothing() {
    let s = Setup::new("pbxset-rerender", "sip.conf", "chan_sip");
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    let written = read(&s.conf);
    // New values in the config, and a file that cannot be replaced.
    let cfg = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(
        &s.cfg,
        cfg.replace(
            "file = \"etc/sip.conf\"",
            "file = \"etc/sip.conf\"\nmin = \"30s\"",
        ),
    )
    .unwrap();
    let guard = Immutable::set(&s.conf);
    let (code, out) = s.run();
    assert_eq!(code, 1, "{out}");
    assert_eq!(read(&s.conf), written);
    drop(guard);
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert!(String::from_utf8(read(&s.conf))
        .unwrap()
        .contains("minexpiry = 30"));
    s.write_config("disabled", "chan_sip");
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert_eq!(read(&s.conf), read(&s.fixture));
}

#[test]
fn a_symlinked_target_stays_a_link() {
    let s = Setup::new("pbxset-link", "sip.conf", "chan_sip");
    // /etc/asterisk/sip.conf -> a file kept elsewhere.
    let real = s.dir.path("elsewhere.conf");
    std::fs::rename(&s.conf, &real).unwrap();
    std::os::unix::fs::symlink(&real, &s.conf).unwrap();
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert!(std::fs::symlink_metadata(&s.conf)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(read(&real), read(&fixture("sip.conf.ha")));
    s.write_config("disabled", "chan_sip");
    let (code, out) = s.run();
    assert_eq!(code, 0, "{out}");
    assert!(std::fs::symlink_metadata(&s.conf)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(read(&real), read(&s.fixture));
}
