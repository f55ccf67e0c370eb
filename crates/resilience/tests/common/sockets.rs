//! Ports for the processes a test starts, without ever picking one by
//! binding and releasing it (another process could take it in between):
//! the test binds real sockets on 127.0.0.1:0, writes the addresses it got
//! into the configs, and hands the sockets to the process it starts as
//! descriptors 3, 4, … with `LISTEN_PID`/`LISTEN_FDS` (systemd's socket
//! activation, which `resilience` and the web stub accept).
//!
//! The test keeps its copies open for the whole test, so a killed and
//! restarted process gets the very same sockets again. A UDP socket held
//! this way is the same socket as the child's: the kernel queues its
//! datagrams once, for whoever reads, and the test never reads.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A listening TCP socket on 127.0.0.1 with the queue the processes give
/// their own (tokio's 1,024, not std's 128): a test that opens connections
/// faster than a loaded machine accepts them must meet the same queue as in
/// production, not connection attempts retried a second later.
fn listener(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// One bound socket of a test, handed to the process that serves it.
#[derive(Debug)]
pub enum Sock {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

impl Sock {
    /// A UDP socket on 127.0.0.1, port chosen by the kernel.
    pub fn udp() -> Sock {
        Sock::Udp(UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0"))
    }

    /// A listening TCP socket on 127.0.0.1, port chosen by the kernel.
    pub fn tcp() -> Sock {
        Sock::Tcp(listener(0).expect("bind TCP 127.0.0.1:0"))
    }

    /// UDP and TCP on one port (SIP serves both): the UDP port comes from
    /// the kernel, the TCP socket is bound on the same number, and a number
    /// whose TCP side is busy is given back and another one drawn.
    pub fn udp_tcp() -> [Sock; 2] {
        for _ in 0..100 {
            let u = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
            let port = u.local_addr().unwrap().port();
            if let Ok(t) = listener(port) {
                return [Sock::Udp(u), Sock::Tcp(t)];
            }
        }
        panic!("no port free for both UDP and TCP after 100 draws");
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Sock::Udp(s) => s.local_addr(),
            Sock::Tcp(s) => s.local_addr(),
        }
        .unwrap()
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// The UDP socket itself, for a test that plays the process (a Main
    /// the test impersonates reads and sends on the Main's heartbeat port).
    pub fn udp_clone(&self) -> UdpSocket {
        match self {
            Sock::Udp(s) => s.try_clone().expect("dup a UDP socket"),
            Sock::Tcp(_) => panic!("a TCP socket, not UDP"),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Sock::Udp(s) => s.as_raw_fd(),
            Sock::Tcp(s) => s.as_raw_fd(),
        }
    }
}

/// `program args…` started with `socks` as descriptors 3, 4, … and
/// `LISTEN_PID` set to its own pid: a shell sets the variables and `exec`s
/// the program, which keeps the pid. Without sockets, the plain command.
pub fn command(program: &str, args: &[&str], socks: &[&Sock]) -> Command {
    if socks.is_empty() {
        let mut c = Command::new(program);
        c.args(args);
        return c;
    }
    let n = socks.len() as RawFd;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            // WATCHDOG_PID, like LISTEN_PID, must name the process that
            // runs: this shell's pid, which exec keeps.
            "LISTEN_PID=$$ LISTEN_FDS={n}; export LISTEN_PID LISTEN_FDS; \
             if [ -n \"$WATCHDOG_USEC\" ]; then WATCHDOG_PID=$$; export WATCHDOG_PID; fi; \
             exec \"$0\" \"$@\""
        ))
        .arg(program)
        .args(args);
    let fds: Vec<RawFd> = socks.iter().map(|s| s.fd()).collect();
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl,
    // dup2) on descriptors the parent owns; nothing is allocated.
    unsafe {
        c.pre_exec(move || {
            // First above the targets (close-on-exec), so that placing one
            // never overwrites another still to be placed.
            let mut high = [0 as RawFd; 64];
            if fds.len() > high.len() {
                return Err(std::io::Error::other("too many sockets"));
            }
            for (i, fd) in fds.iter().enumerate() {
                let h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3 + n);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high[i] = h;
            }
            for (i, h) in high[..fds.len()].iter().enumerate() {
                // dup2 leaves the new descriptor inheritable.
                if libc::dup2(*h, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    c
}

/// A TCP socket bound on 127.0.0.1 and never listening: connections to
/// its port are refused while the test holds it, and no one else can take
/// the port.
pub struct Closed {
    _fd: std::os::fd::OwnedFd,
    port: u16,
}

impl Closed {
    pub fn port(&self) -> u16 {
        self.port
    }
}

pub fn bound_not_listening() -> Closed {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor created and owned here.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = libc::bind(fd, &a as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut l = len;
        let r = libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut l);
        assert_eq!(r, 0, "getsockname: {}", std::io::Error::last_os_error());
        Closed {
            _fd: owned,
            port: u16::from_be(got.sin_port),
        }
    }
}
