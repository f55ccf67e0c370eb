#!/usr/bin/env python3
"""bench/hostile: what a stranger (and a holder of the Main's certificate)
can send a node, how much of it, what held, and the node's memory before and
after. Loopback only, bounded in count and time (the whole run takes under
two minutes).

A Main and a Standby run from the release binary on 127.0.0.1 with the
default heartbeat timers (200 ms, failover after 3 s), an API on port 0 (the
address is read back from each node's log), a cluster CA and one replicated
folder; the Standby runs with RLIMIT_NOFILE = 1,024 (the shipped units'
default before LimitNOFILE was set). The Main also sends its heartbeats to
a UDP socket of this script (a second heartbeat path in its config), so the
flood can replay genuine frames. Every attack targets the Standby, in this
order (the last one kills the Main):

1. heartbeat flood: garbage, frames signed with a wrong key, truncated
   frames and replays of captured real frames to its heartbeat port;
3. parallel `GET /api/v1/events?limit=10000`, unauthenticated;
4. API requests with a foreign `Host:` (DNS rebinding);
5. garbage TCP connections to the replication port for 10 s;
6. a TLS session with the Main's certificate that says Hello and goes
   silent, then a real push (`resilience replicate`);
7. a `Data` frame header announcing 64 MiB, and no bytes;
2. 2,000 idle TCP connections to its API, then SIGKILL of the Main.

RSS is VmRSS from /proc/PID/status: before the attack, the peak sampled
every 50 ms during it, and after it (once the attack's sockets are closed).
Figures come from the node's own status document (heartbeat.rejected,
replication.refused) and logs. A row whose mechanism the build lacks still
runs and says what did not hold; nothing is skipped silently.

Ports: API and the Main's replication listener bind port 0; the two
heartbeat ports and the Standby's replication port must be known to the
other node before it starts, so they are picked free just before (a bench,
not a test: a rare clash fails the run loudly).

Usage: python3 bench/hostile/run.py [--keep]
"""

import argparse
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BINARY = TARGET / "release" / "resilience"
HOST = "127.0.0.1"
READ_TIMEOUT_S = 2
FLOOD_DATAGRAMS = 1_000_000
EVENT_CLIENTS, EVENT_ROUNDS = 32, 20
HOST_REQUESTS = 200
GARBAGE_SECONDS = 10
IDLE_CONNECTIONS = 2_000
NOFILE = 1024
started = []  # every process this bench starts, killed by pid at the end
rows = []  # (attack, sent, held, rss) for the table


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(*args, **kw):
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, **kw)


def rss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def mb(kb):
    return "gone" if kb is None else f"{kb / 1024:.1f}"


class Peak:
    """Samples a process's RSS every 50 ms while the `with` block runs."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def __enter__(self):
        self.before = rss_kb(self.pid)
        self.peak = self.before or 0
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop.wait(0.05):
            r = rss_kb(self.pid)
            if r:
                self.peak = max(self.peak, r)

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()

    def after(self):
        self.after_kb = rss_kb(self.pid)
        self.peak = max(self.peak, self.after_kb or 0)
        return f"{mb(self.before)} → {mb(self.after_kb)} (peak {mb(self.peak)})"


class Node:
    def __init__(self, work, name, conf, nofile=None):
        self.name, self.conf, self.log = name, conf, work / f"{name}.log"
        pre = None
        if nofile:
            def pre():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        out = open(self.log, "ab")
        self.p = subprocess.Popen([str(BINARY), "node", "--config", str(conf)], stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=work, preexec_fn=pre)
        out.close()
        started.append(self.p)
        self.api = self.wait_log(r"API on http://(\S+)", 20)

    def text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, pattern, timeout):
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(pattern, self.text())
            if m:
                return m.group(1)
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no {pattern!r} in its log:\n{self.text()[-3000:]}")

    def get(self, path, timeout=5):
        try:
            with urllib.request.urlopen(f"http://{self.api}{path}", timeout=timeout) as r:
                return json.loads(r.read())
        except Exception:
            return None

    def status(self):
        return self.get("/api/v1/status") or {}

    def refused(self):
        """The API's own refusal counters, by reason, from /metrics."""
        try:
            with urllib.request.urlopen(f"http://{self.api}/metrics", timeout=5) as r:
                text = r.read().decode()
        except Exception:
            return {}
        out = {}
        for m in re.finditer(r'^resilience_api_refused_total\{reason="([^"]+)"\} (\d+)', text, re.M):
            out[m.group(1)] = int(m.group(2))
        return out

    def active(self):
        return (self.get("/api/v1/ha") or {}).get("active")


def wait(cond, timeout, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def config(work, name, peer, hb, peer_hb, repl_listen, repl_peer, extra_hb=None):
    other = "standby" if name == "main" else "main"
    extra = f'extra_addresses = ["{HOST}:{extra_hb}"]\n' if extra_hb else ""
    (work / f"{name}-etc").mkdir(exist_ok=True)
    conf = work / f"{name}.toml"
    conf.write_text(f"""[node]
name = "pbx-{name}"
type = "{name}"
state_dir = "{work}/state-{name}"

[peer]
name = "pbx-{other}"
address = "{HOST}:{peer_hb}"
{extra}
[heartbeat]
listen = "{HOST}:{hb}"
interval = "200ms"
failover_after = "3s"
key_file = "{work}/cluster.key"

[failback]
policy = "manual"

[[service]]
name = "pbx"
start = "date +%s.%N > {work}/{name}.up"
stop = "rm -f {work}/{name}.up"
timeout = "10s"

[api]
listen = "{HOST}:0"
token_file = "{work}/api.token"

[replication]
listen = "{HOST}:{repl_listen}"
peer = "{HOST}:{repl_peer}"
ca = "{work}/pki/ca.pem"
cert = "{work}/pki/pbx-{name}.crt"
key = "{work}/pki/pbx-{name}.key"
read_timeout = "{READ_TIMEOUT_S}s"

[[replication.dir]]
name = "etc"
path = "{work}/{name}-etc"
""")
    return conf


# ---- 1. heartbeat flood --------------------------------------------------

def wrong_key_frame(rnd):
    body = b"RSHB" + bytes([2, 1, 1, 1, 1, 0, 0, 0])
    body += struct.pack(">6Q", *(rnd.getrandbits(64) for _ in range(6))) + struct.pack(">I", 0)
    name = b"pbx-main"
    body += bytes([len(name)]) + name
    return body + rnd.randbytes(32)  # a tag under some other key


def heartbeat_flood(standby, hb_port, captured):
    rnd = random.Random(12)
    garbage = [rnd.randbytes(rnd.randrange(1, 200)) for _ in range(256)]
    forged = [wrong_key_frame(rnd) for _ in range(256)]
    truncated = [f[: rnd.randrange(5, len(f))] for f in forged]
    replays = captured or forged
    kinds = [garbage, forged, truncated, replays]
    before = (standby.status().get("heartbeat") or {})
    rej0 = before.get("rejected") or {}
    recv0 = before.get("received", 0)
    seen_active, heard_always = [], []
    stop = threading.Event()

    def watch():
        while not stop.wait(0.2):
            st = standby.status()
            seen_active.append(bool((st.get("node") or {}).get("active")))
            heard_always.append(bool((st.get("peer") or {}).get("heard")))

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    sent = dropped_local = 0
    t0 = time.time()
    w = threading.Thread(target=watch, daemon=True)
    with Peak(standby.p.pid) as pk:
        w.start()
        for i in range(FLOOD_DATAGRAMS):
            pool = kinds[i & 3]
            try:
                s.sendto(pool[(i >> 2) % len(pool)], (HOST, hb_port))
                sent += 1
            except BlockingIOError:
                dropped_local += 1
                time.sleep(0.0005)
        took = time.time() - t0
        time.sleep(1.0)  # let the node drain its socket and tick
        stop.set()
        w.join()
    s.close()
    st = standby.status()
    hb = st.get("heartbeat") or {}
    rej = {k: v - rej0.get(k, 0) for k, v in (hb.get("rejected") or {}).items() if v - rej0.get(k, 0)}
    peer = st.get("peer") or {}
    held = (not any(seen_active) and not (st.get("node") or {}).get("active")
            and all(heard_always) and peer.get("heard"))
    rows.append((
        "1. heartbeat flood to the Standby's UDP port",
        f"{sent:,} datagrams in {took:.1f} s ({sent / took:,.0f}/s): garbage, wrong-key frames, truncated "
        f"frames, {'replays of ' + str(len(captured)) + ' captured real frames' if captured else 'no capture: wrong-key again'}"
        f" (¼ each)",
        f"{'held' if held else 'BROKE'}: Standby Active in {sum(seen_active)} of {len(seen_active)} samples, "
        f"heard the Main in {sum(heard_always)} of {len(heard_always)}; rejected "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(rej.items()))
        + f"; datagrams that reached the node {hb.get('received', 0) - recv0:,} (the rest dropped by the "
        f"kernel: socket buffer full), of them genuine frames accepted "
        f"{hb.get('received', 0) - recv0 - sum(rej.values()):,}",
        pk.after()))


def capture_frames(port_sock, n=8, timeout=10):
    port_sock.settimeout(timeout)
    frames = []
    try:
        while len(frames) < n:
            frames.append(port_sock.recv(2048))
    except OSError:
        pass
    return frames


# ---- 3. events pages -----------------------------------------------------

HISTORY = 10_000


def prefill_history(state_dir):
    """A node that has run for months: its history full (the store keeps
    10,000 events), so `limit=10000` has something to return. Same schema
    as the node's store (CREATE TABLE IF NOT EXISTS there)."""
    import sqlite3
    state_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state_dir / "state.db")
    db.executescript("""PRAGMA journal_mode = WAL;
        CREATE TABLE IF NOT EXISTS facts (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT,
            at_ms INTEGER NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL);""")
    t0 = int(time.time() * 1000) - HISTORY * 60_000
    db.executemany("INSERT INTO events (at_ms, kind, text) VALUES (?, ?, ?)",
                   [(t0 + i * 60_000, "peer", f"peer heard (status active) — pbx-main is active; event {i} of an "
                     "old history, long enough to weigh what a real event weighs") for i in range(HISTORY)])
    db.commit()
    db.close()


def events_flood(standby):
    sizes, counts, codes = [], [], {}
    lock = threading.Lock()

    def one():
        code, body = None, b""
        try:
            with urllib.request.urlopen(f"http://{standby.api}/api/v1/events?limit=10000", timeout=30) as r:
                code, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            code = e.code
        except Exception as e:
            code = type(e).__name__
        with lock:
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                sizes.append(len(body))
                counts.append(len(json.loads(body).get("events", [])))

    t0 = time.time()
    with Peak(standby.p.pid) as pk:
        for _ in range(EVENT_ROUNDS):
            ts = [threading.Thread(target=one) for _ in range(EVENT_CLIENTS)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        time.sleep(0.5)
    took = time.time() - t0
    rows.append((
        "3. parallel `GET /api/v1/events?limit=10000`, no token",
        f"{EVENT_CLIENTS} in parallel × {EVENT_ROUNDS} rounds = {EVENT_CLIENTS * EVENT_ROUNDS} requests in {took:.1f} s",
        f"answers {', '.join(f'{k}: {v}' for k, v in sorted(codes.items(), key=str))}; "
        f"events per page max {max(counts, default=0):,} (history {HISTORY:,}), "
        f"largest body {max(sizes, default=0):,} bytes",
        pk.after()))


# ---- 4. foreign Host -----------------------------------------------------

def foreign_host(standby):
    host, port = standby.api.rsplit(":", 1)
    codes = {}
    ref0 = standby.refused().get("foreign_host", 0)
    with Peak(standby.p.pid) as pk:
        for i in range(HOST_REQUESTS):
            # A rebinding page's requests carry the attacker's name (an IP
            # literal cannot be rebound, so the node answers those).
            foreign = ["evil.example", f"evil.example:{port}", "attacker.test", f"rebind.attacker.test:{port}"][i % 4]
            c = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                c.putrequest("GET", "/api/v1/status", skip_host=True)
                c.putheader("Host", foreign)
                c.endheaders()
                code = c.getresponse().status
            except Exception as e:
                code = type(e).__name__
            finally:
                c.close()
            codes[code] = codes.get(code, 0) + 1
    own = http.client.HTTPConnection(host, int(port), timeout=5)
    own.request("GET", "/api/v1/status")
    own_code = own.getresponse().status
    own.close()
    refused = sum(v for k, v in codes.items() if k != 200)
    counted = standby.refused().get("foreign_host", 0) - ref0
    rows.append((
        "4. `GET /api/v1/status` with a foreign `Host:` (DNS rebinding)",
        f"{HOST_REQUESTS} requests, Host evil.example, evil.example:PORT, attacker.test, rebind.attacker.test:PORT",
        f"{'held' if refused == HOST_REQUESTS else 'BROKE'}: refused {refused} of {HOST_REQUESTS} "
        f"(answers {', '.join(f'{k}: {v}' for k, v in sorted(codes.items(), key=str))}); "
        f"counted foreign_host {counted}; own Host {standby.api} answered {own_code}",
        pk.after()))


# ---- 5. garbage to the replication port ----------------------------------

def replication_garbage(standby, port):
    rnd = random.Random(5)
    junk = [rnd.randbytes(rnd.randrange(1, 600)) for _ in range(64)]
    log0 = standby.log.stat().st_size
    ref0 = ((standby.status().get("replication") or {}).get("refused") or {}).get("total", 0)
    counts = [0, 0]
    lock = threading.Lock()
    end = time.time() + GARBAGE_SECONDS

    def worker(k):
        n = f = 0
        while time.time() < end:
            try:
                s = socket.create_connection((HOST, port), timeout=2)
                s.sendall(junk[(n + k) % len(junk)])
                s.close()
                n += 1
            except OSError:
                f += 1
                time.sleep(0.01)
        with lock:
            counts[0] += n
            counts[1] += f

    with Peak(standby.p.pid) as pk:
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        time.sleep(1.5)
    # Refusals are summarised in the log periodically: wait for the counter to settle.
    st = standby.status()
    rep = st.get("replication") or {}
    refused = (rep.get("refused") or {})
    log_bytes = standby.log.stat().st_size - log0
    rows.append((
        "5. garbage TCP connections to the replication port",
        f"{counts[0]:,} connections in {GARBAGE_SECONDS} s (4 clients, 1–600 random bytes each; "
        f"{counts[1]} connects failed)",
        f"log grew {log_bytes:,} bytes; refused counted {refused.get('total', 0) - ref0:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted((refused.get('by_reason') or {}).items()))})",
        pk.after()))


# ---- 6, 7. sessions with the Main's certificate --------------------------

def tls_session(work, port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(work / "pki" / "ca.pem"))
    ctx.load_cert_chain(str(work / "pki" / "pbx-main.crt"), str(work / "pki" / "pbx-main.key"))
    raw = socket.create_connection((HOST, port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="pbx-standby")
    hello = json.dumps({"version": 1, "job": "etc"}).encode()
    s.sendall(bytes([1]) + struct.pack(">I", len(hello)) + hello)
    return s


def read_frame(s):
    def exact(n):
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c:
                raise EOFError("closed")
            b += c
        return b
    head = exact(5)
    return head[0], exact(struct.unpack(">I", head[1:])[0])


def replicate(main, main_conf):
    # The API binds port 0: its address comes from the log, the token file from the config.
    r = run("replicate", "--config", str(main_conf), "--api", f"http://{main.api}", timeout=60)
    return r.returncode, (r.stdout + r.stderr).strip()


def silent_session(work, main, standby, port, main_conf):
    (work / "main-etc" / "probe.conf").write_text(f"pushed at {time.time()}\n")
    with Peak(standby.p.pid) as pk:
        s = tls_session(work, port)
        kind, _ = read_frame(s)
        t0 = time.time()
        # A real push while the silent session holds the job, until one goes through.
        tries, last = 0, ""
        ok = False
        while time.time() - t0 < 30:
            tries += 1
            code, last = replicate(main, main_conf)
            if code == 0:
                ok = True
                break
            time.sleep(0.2)
        took = time.time() - t0
        s.settimeout(10)
        try:
            k, body = read_frame(s)
            fate = f"silent client got frame {k} ({body[:60].decode(errors='replace')})"
        except (EOFError, OSError, ssl.SSLError) as e:
            fate = f"silent client's connection ended ({type(e).__name__})"
        s.close()
    arrived = (work / "standby-etc" / "probe.conf").exists()
    ended = "session ended" in standby.text()
    rows.append((
        "6. TLS session with the Main's certificate: Hello, then silence",
        f"1 session (manifest received: kind {kind}), then `resilience replicate` every 0.2 s",
        f"{'held' if ok and arrived else 'BROKE'}: push {'succeeded' if ok else 'failed'} {took:.1f} s after "
        f"the Hello (read_timeout {READ_TIMEOUT_S} s, {tries} tries{'' if ok else '; last: ' + last[-120:]}); "
        f"file on the Standby: {arrived}; {fate}; 'session ended' logged: {ended}",
        pk.after()))


def huge_data_header(work, standby, port):
    with Peak(standby.p.pid) as pk:
        s = tls_session(work, port)
        read_frame(s)  # the manifest
        s.sendall(bytes([4]) + struct.pack(">I", 64 << 20))
        s.settimeout(READ_TIMEOUT_S * 3 + 5)
        try:
            k, body = read_frame(s)
            answer = f"answered frame {k}: {body[:90].decode(errors='replace')}"
        except (EOFError, OSError, ssl.SSLError) as e:
            answer = f"connection ended ({type(e).__name__})"
        s.close()
        time.sleep(0.5)
    refused = "over the" in answer
    rows.append((
        "7. a `Data` frame header announcing 64 MiB, no body",
        "1 session: Hello, then the 5-byte header [4][64 MiB]",
        f"{'held' if refused else 'see answer'}: {answer}; RSS peak − before "
        f"{(pk.peak - (pk.before or 0)) / 1024:+.1f} MB",
        pk.after()))


# ---- 2. idle connections, then the Main dies -----------------------------

def idle_then_failover(work, main, standby):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, IDLE_CONNECTIONS + 512)), hard))
    host, port = standby.api.rsplit(":", 1)
    ref0 = standby.refused()
    held, failed = [], 0
    with Peak(standby.p.pid) as pk:
        # Once the node stops accepting and its backlog is full, a connect
        # waits for SYN retries: a short timeout and a cap on failures keep
        # this step bounded.
        for _ in range(IDLE_CONNECTIONS):
            try:
                held.append(socket.create_connection((host, int(port)), timeout=0.5))
            except OSError:
                failed += 1
                if failed >= 50:
                    break
        time.sleep(2)  # let the node accept what it will
        fds = len(os.listdir(f"/proc/{standby.p.pid}/fd"))
        t_kill = time.time()
        main.p.kill()
        main.p.wait()
        up = work / "standby.up"
        serving = wait(lambda: up.exists() and up.stat().st_size > 0, 30, 0.01)
        took = (float(up.read_text()) - t_kill) if serving else None
        still = sum(1 for s in held if _open(s))
        for s in held:
            s.close()
        t_close = time.time()
        late = None
        if not serving and wait(lambda: up.exists() and up.stat().st_size > 0, 30, 0.01):
            late = float(up.read_text()) - t_close
        api_ok = wait(lambda: standby.active() is True, 15)
        # Read once the bench's own connections are gone: from the same
        # address, its /metrics request is over the per-address cap too.
        ref = {k: v - ref0.get(k, 0) for k, v in standby.refused().items() if v - ref0.get(k, 0)}
    faulted = "Too many open files" in standby.text()
    rows.append((
        "2. idle TCP connections to the Standby's API (Standby at 1,024 fds), then SIGKILL of the Main",
        f"{len(held):,} connections opened ({failed} failed{', gave up' if failed >= 50 else ''}), held idle; node fds before the kill {fds}",
        f"{'held' if serving and api_ok and not faulted else 'BROKE'}: service start ran "
        f"{'%.2f s after the kill' % took if took is not None else 'not within 30 s of the kill'} "
        f"(failover_after 3 s){'' if late is None else '; only once this script closed its connections (30 s after the kill), %.1f s later' % late}; "
        f"API says active at the end: {api_ok}; 'Too many open files' logged: {faulted}; "
        f"connections still open at the end {still:,}; API refusals "
        + (", ".join(f"{k} {v:,}" for k, v in sorted(ref.items())) or "none counted"),
        pk.after()))


def _open(s):
    try:
        s.setblocking(False)
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs) and print its path")
    ap.add_argument("--no-build", action="store_true", help="use the release binary as it is")
    args = ap.parse_args()
    # SIGTERM (timeout, Ctrl-C's cousin) still kills the nodes in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    if not args.no_build:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "resilience"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="reshostile-"))
    os.chmod(work, 0o700)
    t_start = time.time()
    try:
        r = run("keygen", "--out", str(work / "cluster.key"))
        assert r.returncode == 0, r.stderr
        token = work / "api.token"
        token.write_text("".join(random.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(48)) + "\n")
        token.chmod(0o600)
        for a in (["init"], ["issue", "pbx-main"], ["issue", "pbx-standby"]):
            r = run("cert", *a, "--dir", str(work / "pki"))
            assert r.returncode == 0, f"cert {a}: {r.stdout}{r.stderr}"
        capture = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        capture.bind((HOST, 0))
        hb_main, hb_standby = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        repl_standby = free_port(socket.SOCK_STREAM)
        main_conf = config(work, "main", "standby", hb_main, hb_standby, 0, repl_standby,
                           extra_hb=capture.getsockname()[1])
        standby_conf = config(work, "standby", "main", hb_standby, hb_main, repl_standby, 9)
        prefill_history(work / "state-standby")
        main = Node(work, "main", main_conf)
        standby = Node(work, "standby", standby_conf, nofile=NOFILE)
        standby.wait_log(r"accepting pushes on (\S+)", 20)
        if not wait(lambda: (work / "main.up").exists() and main.active() is True, 30):
            raise RuntimeError(f"the Main never served\n{main.text()[-3000:]}")
        if not wait(lambda: (standby.status().get("peer") or {}).get("heard"), 20):
            raise RuntimeError(f"the Standby never heard the Main\n{standby.text()[-3000:]}")
        captured = capture_frames(capture)
        capture.close()
        time.sleep(2)  # both settled
        print(f"nodes up: main pid {main.p.pid}, standby pid {standby.p.pid} (nofile {NOFILE}); "
              f"idle RSS main {mb(rss_kb(main.p.pid))} MB, standby {mb(rss_kb(standby.p.pid))} MB", flush=True)
        for name, f in [
            ("heartbeat flood", lambda: heartbeat_flood(standby, hb_standby, captured)),
            ("events", lambda: events_flood(standby)),
            ("foreign Host", lambda: foreign_host(standby)),
            ("replication garbage", lambda: replication_garbage(standby, repl_standby)),
            ("silent session", lambda: silent_session(work, main, standby, repl_standby, main_conf)),
            ("64 MiB header", lambda: huge_data_header(work, standby, repl_standby)),
            ("idle connections + failover", lambda: idle_then_failover(work, main, standby)),
        ]:
            t0 = time.time()
            try:
                f()
            except Exception as e:
                rows.append((name, "—", f"not measured: the bench step failed: {type(e).__name__}: {e}", "—"))
            print(f"  {name}: {time.time() - t0:.1f} s", flush=True)
            if standby.p.poll() is not None:
                rows.append(("(standby)", "—", f"the Standby exited with {standby.p.returncode}", "—"))
                break
    finally:
        for p in started:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass
    print(f"\nwhole run {time.time() - t_start:.0f} s; binary {BINARY}\n")
    print("| attack (target: the Standby) | sent, how much | what held | Standby RSS MB before → after (peak) |")
    print("|---|---|---|---|")
    order = sorted(rows, key=lambda r: r[0][:2])
    for r in order:
        print("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    if args.keep:
        print(f"\nwork folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
