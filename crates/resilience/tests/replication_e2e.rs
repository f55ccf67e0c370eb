//! End-to-end replication: two real nodes, folders pushed Main → Standby over
//! TLS under a cluster CA made with `resilience cert`.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A pair whose nodes replicate folder `<name>-etc` as job "etc".
fn replicating_pair(test: &str) -> (Pair, [u16; 2]) {
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
    let ports = [free_tcp(), free_tcp()];
    for i in 0..2 {
        let name = p.specs[i].name.clone();
        let folder = p.dir.path(&format!("{name}-etc"));
        std::fs::create_dir_all(&folder).unwrap();
        p.specs[i].extra = format!(
            "\n[replication]\nlisten = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\nca = \"{pki_s}/ca.pem\"\ncert = \"{pki_s}/{name}.crt\"\nkey = \"{pki_s}/{name}.key\"\n\n[[replication.dir]]\nname = \"etc\"\npath = \"{}\"\nexclude = [\"*.swp\"]\n",
            ports[i],
            ports[1 - i],
            folder.display()
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
    assert!(wait_until(secs(10), || p.marker(MAIN)), "{}", p.logs());
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
    assert!(wait_until(secs(10), || p.marker(MAIN)), "{}", p.logs());
    let cfg = p.config_path(MAIN).display().to_string();
    let push = std::thread::spawn(move || cli(&["replicate", "--config", &cfg]));
    // Kill the Main once the Standby is receiving.
    let tmp_seen = wait_until(secs(20), || {
        std::fs::read_dir(&dst)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".resilience-tmp."))
    });
    assert!(tmp_seen, "transfer never started\n{}", p.logs());
    std::thread::sleep(Duration::from_millis(100));
    p.kill(MAIN);
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

/// A TLS client with the given identity, speaking the replication framing.
async fn raw_session(
    port: u16,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("pbx-standby").unwrap(), tcp)
        .await?;
    // The server checks the client certificate after the handshake: a
    // round trip shows whether it kept the connection.
    frame(&mut s, 1, br#"{"version":1,"job":"etc"}"#).await?;
    Ok(s)
}

async fn frame<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    kind: u8,
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = vec![kind];
    head.extend_from_slice(&(body.len() as u32).to_be_bytes());
    s.write_all(&head).await?;
    s.write_all(body).await?;
    s.flush().await
}

async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok((head[0], body))
}

#[test]
fn a_malicious_stream_and_a_foreign_ca_are_refused() {
    let _g = serial();
    let (mut p, ports) = replicating_pair("repl-evil");
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.marker(MAIN)), "{}", p.logs());
    let pki = p.dir.path("pki");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A holder of a real Main certificate tries to write outside the folder.
    rt.block_on(async {
        let mut s = raw_session(
            ports[STANDBY],
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
            ports[STANDBY],
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

    // And no push lands on a Standby that serves.
    p.kill(MAIN);
    assert!(wait_until(secs(10), || p.active(STANDBY) == Some(true)));
    rt.block_on(async {
        let mut s = raw_session(
            ports[STANDBY],
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
