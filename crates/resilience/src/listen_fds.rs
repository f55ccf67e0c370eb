//! Sockets handed over by the parent process (systemd's socket activation
//! protocol: `LISTEN_PID`, `LISTEN_FDS`, descriptors from 3). A packaged
//! unit lets the edge serve port 5060 without root this way, and the tests
//! and the lab bind every port themselves on port 0 and hand the sockets
//! over, so no port is ever picked by binding and releasing it.
//!
//! Written here rather than with the `listenfd` crate: that crate hands
//! sockets out by index, while every place here binds a configured address
//! and needs the inherited socket *bound to that address* (and of the right
//! type), whatever the order the parent passed them in; it also leaves the
//! descriptors inheritable and `LISTEN_FDNAMES` set. What is needed is about
//! sixty lines over `socket2`, already a dependency.
//!
//! [`adopt_from_env`] runs first thing in `main`, before any thread exists
//! (it changes the environment); the binding sites then ask [`udp`] /
//! [`tcp`] (or the tokio forms), which fall back to binding when nothing
//! inherited matches: without inherited sockets nothing changes.

use socket2::{Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// The first inherited descriptor (after stdin, stdout, stderr).
const FIRST_FD: i32 = 3;

/// An inherited socket not yet claimed by a binding site.
struct Inherited {
    socket: Socket,
    addr: SocketAddr,
    stream: bool,
}

static INHERITED: Mutex<Vec<Inherited>> = Mutex::new(Vec::new());

/// How many descriptors were handed over (3..3+n): a re-exec hands the
/// same ones on to the new image, which is still this process.
static HANDED: AtomicI32 = AtomicI32::new(0);

/// How many descriptors the environment hands to process `me`: none unless
/// `LISTEN_PID` names it (the variables may be meant for a parent).
fn count(listen_pid: Option<&str>, listen_fds: Option<&str>, me: u32) -> i32 {
    match (listen_pid, listen_fds) {
        (Some(pid), Some(n)) if pid.trim().parse::<u32>().ok() == Some(me) => {
            n.trim().parse::<i32>().unwrap_or(0).clamp(0, 1024)
        }
        _ => 0,
    }
}

/// Take the sockets handed to this process, mark them close-on-exec, and
/// remove the protocol's variables so the services the node starts inherit
/// neither. Must run before any thread starts (it edits the environment).
pub fn adopt_from_env() {
    let n = count(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    );
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    HANDED.store(n, Ordering::Relaxed);
    for fd in FIRST_FD..FIRST_FD + n {
        // SAFETY: the protocol hands descriptors 3..3+n to this process and
        // nothing else in it has opened or claimed them yet (first thing in
        // `main`); a descriptor that is not an open socket is closed below.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        adopt(owned);
    }
}

/// Keep one inherited descriptor if it is a bound IP socket; close it
/// otherwise.
fn adopt(fd: OwnedFd) {
    let socket = Socket::from(fd);
    let _ = socket.set_cloexec(true);
    let (Ok(kind), Some(addr)) = (
        socket.r#type(),
        socket.local_addr().ok().and_then(|a| a.as_socket()),
    ) else {
        return;
    };
    let stream = match kind {
        Type::STREAM => true,
        Type::DGRAM => false,
        _ => return,
    };
    lock().push(Inherited {
        socket,
        addr,
        stream,
    });
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Inherited>> {
    INHERITED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The inherited socket of this type bound to exactly `addr`, removed from
/// the pool (a configured port 0 never matches: inherited ones are bound).
fn take(addr: SocketAddr, stream: bool) -> Option<Socket> {
    let mut pool = lock();
    let i = pool
        .iter()
        .position(|s| s.addr == addr && s.stream == stream)?;
    let s = pool.swap_remove(i);
    tracing::info!(
        "using the inherited {} socket {addr}",
        if stream { "TCP" } else { "UDP" }
    );
    Some(s.socket)
}

/// The inherited UDP socket bound to `addr`, if the parent handed one.
pub fn take_udp(addr: SocketAddr) -> Option<std::net::UdpSocket> {
    take(addr, false).map(Into::into)
}

/// The inherited TCP socket bound to `addr`, listening (an inherited one
/// that is bound but not yet listening is made to listen).
pub fn take_tcp(addr: SocketAddr) -> io::Result<Option<std::net::TcpListener>> {
    let Some(s) = take(addr, true) else {
        return Ok(None);
    };
    if !s.is_listener()? {
        s.listen(1024)?;
    }
    Ok(Some(s.into()))
}

/// A UDP socket on `addr`: the inherited one, else newly bound.
pub fn udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    match take_udp(addr) {
        Some(s) => Ok(s),
        None => std::net::UdpSocket::bind(addr),
    }
}

/// A TCP listener on `addr`: the inherited one, else newly bound.
pub fn tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    match take_tcp(addr)? {
        Some(l) => Ok(l),
        None => std::net::TcpListener::bind(addr),
    }
}

/// [`udp`] for tokio (inside a runtime).
pub async fn tokio_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    match take_udp(addr) {
        Some(s) => {
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s)
        }
        None => tokio::net::UdpSocket::bind(addr).await,
    }
}

/// [`tcp`] for tokio (inside a runtime).
pub async fn tokio_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    match take_tcp(addr)? {
        Some(l) => {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }
        None => tokio::net::TcpListener::bind(addr).await,
    }
}

/// Replace this process by `cmd` (the daemon's re-exec: same pid) handing
/// it the sockets this process was handed, at the same numbers: the
/// parent that bound them (systemd, the lab, a test) passes them once.
/// Returns only on failure, the sockets close-on-exec again.
pub fn exec_keeping_sockets(mut cmd: Command) -> io::Error {
    let n = HANDED.load(Ordering::Relaxed);
    let fds = FIRST_FD..FIRST_FD + n;
    // Still ours: the sockets live as long as the process (an unclaimed
    // one stays in the pool), so these numbers name them.
    let set = |inherit: bool| {
        for fd in fds.clone() {
            // SAFETY: fcntl on a descriptor number; at worst EBADF.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    let f = if inherit {
                        flags & !libc::FD_CLOEXEC
                    } else {
                        flags | libc::FD_CLOEXEC
                    };
                    libc::fcntl(fd, libc::F_SETFD, f);
                }
            }
        }
    };
    if n > 0 {
        set(true);
        cmd.env("LISTEN_PID", std::process::id().to_string())
            .env("LISTEN_FDS", n.to_string());
    }
    let e = cmd.exec();
    set(false);
    e
}

/// `program args…` started with `fds` as its descriptors 3, 4, … and
/// `LISTEN_PID`/`LISTEN_FDS` naming it: the way the lab hands each process
/// its sockets. A shell sets the variables and `exec`s the program, which
/// keeps the shell's pid. Without descriptors, the plain command.
pub fn command(program: &Path, args: &[String], fds: Vec<RawFd>) -> Command {
    if fds.is_empty() {
        let mut c = Command::new(program);
        c.args(args);
        return c;
    }
    let n = fds.len() as RawFd;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS={n}; export LISTEN_PID LISTEN_FDS; exec \"$0\" \"$@\""
        ))
        .arg(program)
        .args(args);
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl,
    // dup2) on descriptors the parent owns; nothing is allocated.
    unsafe {
        c.pre_exec(move || {
            // First above the targets (close-on-exec), so that placing one
            // never overwrites another still to be placed.
            let mut high = [0 as RawFd; 64];
            if fds.len() > high.len() {
                return Err(io::Error::other("too many sockets"));
            }
            for (i, fd) in fds.iter().enumerate() {
                let h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, FIRST_FD + n);
                if h < 0 {
                    return Err(io::Error::last_os_error());
                }
                high[i] = h;
            }
            for (i, h) in high[..fds.len()].iter().enumerate() {
                // dup2 leaves the new descriptor inheritable.
                if libc::dup2(*h, FIRST_FD + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockAddr;

    #[test]
    fn only_the_named_process_takes_descriptors() {
        assert_eq!(count(Some("42"), Some("3"), 42), 3);
        assert_eq!(count(Some("41"), Some("3"), 42), 0);
        assert_eq!(count(None, Some("3"), 42), 0);
        assert_eq!(count(Some("42"), None, 42), 0);
        assert_eq!(count(Some("42"), Some("x"), 42), 0);
    }

    /// A socket bound on port 0 and handed over in-process is found by its
    /// address and type, once.
    #[test]
    fn inherited_sockets_match_by_address_and_type() {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (ua, ta) = (u.local_addr().unwrap(), t.local_addr().unwrap());
        adopt(OwnedFd::from(u));
        adopt(OwnedFd::from(t));
        // Wrong type or address: not taken.
        if ua != ta {
            assert!(take_tcp(ua).unwrap().is_none());
        }
        let other: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert!(take_udp(other).is_none());
        let got = take_udp(ua).expect("the inherited UDP socket");
        assert_eq!(got.local_addr().unwrap(), ua);
        assert!(take_udp(ua).is_none(), "taken once only");
        let l = take_tcp(ta).unwrap().expect("the inherited listener");
        assert_eq!(l.local_addr().unwrap(), ta);
        // It still accepts: a connection made now is queued on it.
        let _c = std::net::TcpStream::connect(ta).unwrap();
        l.accept().unwrap();
        // Nothing inherited: bound as before.
        let fresh = udp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(fresh.local_addr().unwrap().port(), 0);
    }

    /// A bound TCP socket that is not yet listening is made to listen.
    #[test]
    fn a_bound_tcp_socket_is_made_to_listen() {
        let s = Socket::new(socket2::Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SockAddr::from(
            "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        ))
        .unwrap();
        let a = s.local_addr().unwrap().as_socket().unwrap();
        adopt(OwnedFd::from(s));
        let l = tcp(a).unwrap();
        let _c = std::net::TcpStream::connect(a).unwrap();
        l.accept().unwrap();
    }
}
