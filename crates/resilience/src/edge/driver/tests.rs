//! An edge started in-process: it answers SIP and its API, and the handle
//! ends it with its relay's and API's threads.

use super::*;
use std::net::UdpSocket;
use std::time::Duration;

/// An edge on ports the system picks, in front of one PBX that is a
/// loopback socket of the test's (it reads the probes and never answers).
fn config(dir: &Path, pbx: SocketAddr) -> std::path::PathBuf {
    let config = format!(
        r#"[edge]
sip_listen = "127.0.0.1:0"
api_listen = "127.0.0.1:0"

[[pbx]]
name = "main"
sip = "{pbx}"

[health]
interval = "500ms"
"#
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// An OPTIONS with no hop left: the edge answers it itself (483), so
/// nothing goes on to the PBX.
fn options(edge: SocketAddr) -> String {
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    phone
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let me = phone.local_addr().unwrap();
    let msg = format!(
        "OPTIONS sip:{edge} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-driver-test\r\n\
         Max-Forwards: 0\r\n\
         From: <sip:100@{me}>;tag=t1\r\n\
         To: <sip:{edge}>\r\n\
         Call-ID: driver-test@{me}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    phone.send_to(msg.as_bytes(), edge).unwrap();
    let mut buf = [0u8; 4096];
    let (n, from) = phone.recv_from(&mut buf).expect("an answer from the edge");
    assert_eq!(from, edge);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn status(api: SocketAddr) -> crate::status::EdgeStatus {
    let agent = crate::http_client::http_agent(None, Some(Duration::from_secs(5)), false).unwrap();
    let mut r = agent
        .get(format!("http://{api}/api/v1/status"))
        .call()
        .unwrap();
    r.body_mut().read_json().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_started_in_process_answers_and_stops_with_its_threads() {
    let dir = std::env::temp_dir().join(format!("resilience-edge-driver-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let path = config(&dir, pbx.local_addr().unwrap());
    let (driver, handle) = EdgeDriver::new(&path).await.unwrap();
    let (sip, api) = (handle.sip_addr(), handle.api_addr());
    assert!(sip.port() != 0 && api.port() != 0, "{sip} {api}");
    let run = tokio::spawn(driver.run());

    let answer = tokio::task::spawn_blocking(move || options(sip))
        .await
        .unwrap();
    assert!(answer.starts_with("SIP/2.0 483 "), "{answer}");
    assert!(answer.contains("Call-ID: driver-test@"), "{answer}");
    let doc = tokio::task::spawn_blocking(move || status(api))
        .await
        .unwrap();
    assert_eq!(doc.pbxs.len(), 1);
    assert_eq!(doc.pbxs[0].name, "main");

    handle.shutdown();
    // `run` returns once the relay's and the API's threads are joined.
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the edge's threads ended within 10 s")
        .unwrap()
        .unwrap();
    // The API's runtime, and its listener, went with its thread.
    let refused = std::net::TcpStream::connect_timeout(&api, Duration::from_secs(2));
    assert!(refused.is_err(), "the API still listens on {api}");
    drop(pbx);
    let _ = std::fs::remove_dir_all(&dir);
}
