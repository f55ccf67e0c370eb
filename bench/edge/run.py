#!/usr/bin/env python3
"""bench/edge: the Resilience SIP edge against Kamailio, same backend, same
machine, same run. Scenarios (run all, or name some):

  rate    highest call rate with under 0.1% failed calls (sipp's built-in
          uac through each proxy to a sipp uas), CPU seconds per 10,000 calls
          at a fixed rate, and the round trip each proxy adds, measured in
          pairs (one OPTIONS straight to the backend and one through the
          proxy, back to back, alternating which goes first).
  storm   registration storm after a failover: phones registered through
          the edge to a Kamailio registrar (the Main), the Main stopped, all
          of them re-register to the Standby; time, failures, edge RSS.
  flood   one source floods REGISTERs and OPTIONS at a bounded rate while
          legitimate phones (other sources) register over and over: their
          success and latency, the share of the flood dropped and the
          proxy's CPU, for the edge and for Kamailio with pike (same rate,
          same registrar behind).
  memory  100,000 distinct phones registered through the edge: the edge's
          VmRSS before and after, bytes per phone; Kamailio's usrloc (shared
          memory in use) the same way.
  gap     incoming-call gap after a failover: a callee registered through
          the edge, the Main killed, a caller dials it every 0.5 s through
          the edge; time from the edge's move of the callee until the
          callee receives an INVITE (capped at the registration expiry).
  poll    150,000 phones registered through the edge, then a phone's
          REGISTER round trip measured in alternating ~2 s phases, quiet
          and with 2 clients walking GET /api/v1/phones?limit=500&after=AOR
          (with the API token) over and over: p50/p99/max of each, full
          walks and pages fetched, the edge's CPU and RSS before/after.

The edge's config is built here and can be extended for builds that know
more keys: --edge-set SECTION.KEY=VALUE (a TOML value, repeatable; also
BENCH_EDGE_SET="a.b=1;c.d=\\"x\\"") and --edge-extra TEXT (raw TOML
appended; also BENCH_EDGE_EXTRA). What the binary accepts is probed with
`resilience check-config`: an API token (`[edge] token_file`, then sent as
a Bearer token) and flood limits (`[limits]`) are used when it does.

Needs root, sipp (sip-tester) and kamailio (installed with apt-get when
missing). Loopback only (127.0.0.0/8); every process it starts is stopped
by pid at the end. Example: python3 bench/edge/run.py flood gap
"""

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
FIXTURES = ROOT / "crates/resilience/tests/fixtures/sip"
SCENARIOS = ["rate", "storm", "flood", "memory", "gap", "poll"]
started = []  # every process this bench starts, stopped by pid at the end


# ---------------------------------------------------------------- processes

def need(binary, package):
    if shutil.which(binary):
        return
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=True)


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(args, log, **kw):
    p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, **kw)
    started.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d))
        except OSError:
            pass
    return out


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tick


def machine_busy():
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu(pids):
    """CPU seconds of the bench's own processes: `pids` (still running),
    the finished sipp runs and this script."""
    c, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return cpu_seconds(pids) + c.ru_utime + c.ru_stime + me.ru_utime + me.ru_stime


class Foreign:
    """How many cores other users of the machine kept busy meanwhile: the
    machine's busy time minus the bench's own (the CPU figures are only
    comparable on a machine nobody else is using)."""

    def __init__(self, pids):
        self.pids = pids
        self.t, self.m, self.o = time.time(), machine_busy(), own_cpu(pids())

    def cores(self):
        dt = max(time.time() - self.t, 1e-3)
        return max(0.0, (machine_busy() - self.m) - (own_cpu(self.pids()) - self.o)) / dt


def wait_quiet(pids, below, at_most):
    """Wait (at most `at_most` s) until others use under `below` cores."""
    end = time.time() + at_most
    while True:
        f = Foreign(pids)
        time.sleep(2)
        c = f.cores()
        if c < below or time.time() >= end:
            return c


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def kamailio(cfg, port, work, name, defines=(), shm_mb=64):
    rundir = work / name
    rundir.mkdir(exist_ok=True)
    args = ["kamailio", "-f", str(cfg), "-DD", "-E", "-n", "1", "-m", str(shm_mb), "-M", "8",
            "-l", f"udp:127.0.0.1:{port}", "-Y", str(rundir), "-w", str(rundir)]
    for d in defines:
        args += ["-A", d]
    return start(args, work / f"{name}.log")


def kamailio_pids(p):
    return [p.pid] + children_of(p.pid)


def wait(cond, timeout, what):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            if cond():
                return
        except Exception as e:
            last = e
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def p99(xs):
    return pct(xs, 0.99)


# ---------------------------------------------------------------- the edge

class Edge:
    """The binary under test and how to configure it: sections of
    `KEY = TOML value`, extended from the command line, with what the binary
    accepts probed by `resilience check-config`."""

    def __init__(self, binary, work, sets, extra, limits_section="limits"):
        self.binary = binary
        self.ls = limits_section
        self.work = work
        self.sets = sets      # [(section, key, value)]
        self.extra = extra    # raw TOML appended
        self.token = None
        self.token_file = work / "edge-token"
        self._probe_n = 0

    def render(self, sections, pbxs, sets=(), extra=""):
        secs = {k: dict(v) for k, v in sections.items()}
        for sec, key, val in list(self.sets) + list(sets):
            secs.setdefault(sec, {})[key] = val
        text = ""
        for sec, kv in secs.items():
            text += f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())
        for name, port in pbxs:
            text += f'[[pbx]]\nname = "{name}"\nsip = "127.0.0.1:{port}"\n'
        for more in (self.extra, extra):
            if more:
                text += more.rstrip("\n") + "\n"
        return text

    def accepts(self, text):
        self._probe_n += 1
        path = self.work / f"probe-{self._probe_n}.toml"
        path.write_text(text)
        r = subprocess.run([self.binary, "check-config", str(path)], capture_output=True, text=True)
        return r.returncode == 0

    def base(self, sip, api, failover="1s", stable="2s"):
        s = {
            "edge": {"sip_listen": f'"127.0.0.1:{sip}"', "api_listen": f'"127.0.0.1:{api}"'},
            "health": {"interval": '"200ms"', "timeout": '"300ms"'},
            "phones": {"failover_after": f'"{failover}"', "failback_stable": f'"{stable}"'},
        }
        if self.token:
            s["edge"]["token_file"] = f'"{self.token_file}"'
        return s

    def detect(self):
        """Use an API token when the build knows `token_file`; say whether
        it has `[limits]`."""
        self.token_file.write_text(secrets.token_hex(16) + "\n")
        os.chmod(self.token_file, 0o600)
        plain = self.base(5060, 8080)
        pbx = [("main", 5070)]
        if not self.accepts(self.render(plain, pbx)):
            sys.exit("resilience check-config refuses the bench's edge config "
                     f"(see {self.work}/probe-{self._probe_n}.toml and --edge-set)")
        with_token = {**plain, "edge": {**plain["edge"], "token_file": f'"{self.token_file}"'}}
        if self.accepts(self.render(with_token, pbx)):
            self.token = self.token_file.read_text().strip()
        self.has_limits = self.accepts(self.render({**plain, self.ls: {}}, pbx))
        print(f"edge build: API token {'sent (token_file)' if self.token else 'not in this build'}; "
              f"flood limits: {f'[{self.ls}] accepted' if self.has_limits else 'no limits in this build'}",
              flush=True)

    # Pike's two numbers under the names a [limits] section may give them;
    # the first set the binary accepts is used (--edge-set limits.* wins).
    LIMIT_NAMES = [("window", "max_per_window"), ("window", "threshold"), ("window", "requests"), ("window", "max_requests"),
                   ("window", "requests_per_window"), ("request_window", "requests_per_window"),
                   ("rate_window", "rate_threshold"), ("window", "density")]

    def limits(self, sections, pbxs, window_s, threshold, sets=()):
        """The `[limits]` lines that make the edge drop a source over
        `threshold` requests per `window_s` seconds (None: no limits);
        lines given on the command line for that section win."""
        given = [f"{k} = {v}" for sec, k, v in list(self.sets) + list(sets) if sec == self.ls]
        if given:
            return {}, f"[{self.ls}] " + ", ".join(given) + " (given)"
        if not getattr(self, "has_limits", False):
            return None, "no limits in this build"
        for wk, tk in self.LIMIT_NAMES:
            lim = {wk: f'"{window_s}s"', tk: str(threshold)}
            if self.accepts(self.render({**sections, self.ls: lim}, pbxs)):
                return lim, f"[{self.ls}] " + ", ".join(f"{k} = {v}" for k, v in lim.items())
        return {}, f"[{self.ls}] with the build's defaults (none of the known key names accepted)"

    def unlimited(self, sections, pbxs):
        """Limits out of the way for the scenarios that send from one
        address on purpose (sipp's uac, a storm from one socket)."""
        if not getattr(self, "has_limits", False) or any(sec == self.ls for sec, _, _ in self.sets):
            return sections
        for cand in [{"enabled": "false"}, {"enable": "false"}] + \
                    [{wk: '"1s"', tk: "1000000000"} for wk, tk in self.LIMIT_NAMES]:
            if self.accepts(self.render({**sections, self.ls: cand}, pbxs)):
                return {**sections, self.ls: cand}
        print("  (could not lift this build's [limits]: its defaults apply)", flush=True)
        return sections

    def write(self, sections, pbxs, tag, sets=(), extra=""):
        path = self.work / f"edge-{tag}.toml"
        path.write_text(self.render(sections, pbxs, sets, extra))
        return path

    def run(self, cfg, tag, log="warn"):
        return start([self.binary, "edge", "--config", str(cfg)], self.work / f"{tag}.log",
                     env={**os.environ, "RUST_LOG": log})

    def get(self, api, path, raw=False):
        req = urllib.request.Request(f"http://127.0.0.1:{api}{path}")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode() if raw else json.load(r)

    def phones(self, api):
        """Phones in the edge's table: the metrics gauge, else the status."""
        n = self.metric(api, "resilience_edge_phones")
        if n is None:
            n = self.get(api, "/api/v1/status").get("phones")
        return int(n) if isinstance(n, (int, float)) else 0

    def away(self, api):
        """Phones served by their backup: the metrics gauge, else the list."""
        n = self.metric(api, "resilience_edge_phones_away")
        if n is None:
            n = sum(1 for p in self.get(api, "/api/v1/phones")["phones"] if p.get("guest"))
        return int(n)

    def metric(self, api, name):
        for line in self.get(api, "/metrics", raw=True).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


# ---------------------------------------------------------------- SIP bits

def sip_request(method, ruri, me, aor_from, aor_to, call_id, cseq, branch, extra="", body=""):
    return (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <{aor_from}>;tag=f{call_id[:8]}\r\nTo: <{aor_to}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def header(msg, name):
    m = re.search(rf"^{name}\s*:\s*(.*?)\r?$", msg, re.M | re.I)
    return m.group(1) if m else None


def status_of(msg):
    first = msg.split("\r\n", 1)[0]
    if first.startswith("SIP/2.0 "):
        try:
            return int(first.split()[1])
        except (IndexError, ValueError):
            return None
    return None


def reply_to(req, code, reason, to_tag="callee"):
    """A response to `req` (text): its Via, From, Call-ID, CSeq, and To with a tag."""
    lines = req.split("\r\n")
    vias = [l for l in lines if l.lower().startswith("via:") or l.lower().startswith("v:")]
    to = header(req, "To") or header(req, "t")
    if to and ";tag=" not in to:
        to += f";tag={to_tag}"
    return (f"SIP/2.0 {code} {reason}\r\n" + "".join(v + "\r\n" for v in vias) +
            f"From: {header(req, 'From') or header(req, 'f')}\r\nTo: {to}\r\n"
            f"Call-ID: {header(req, 'Call-ID') or header(req, 'i')}\r\nCSeq: {header(req, 'CSeq')}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def granted_expiry(resp, asked):
    c = header(resp, "Contact") or ""
    m = re.search(r"expires=(\d+)", c)
    if m:
        return int(m.group(1))
    e = header(resp, "Expires")
    return int(e) if e and e.isdigit() else asked


# ---------------------------------------------------------------- sipp

def sipp_stat(stat):
    lines = [l for l in stat.read_text().splitlines() if l.strip()]
    head, last = lines[0].split(";"), lines[-1].split(";")
    return int(last[head.index("SuccessfulCall(C)")]), int(last[head.index("FailedCall(C)")])


def sipp_calls(target, rate, seconds, work, tag):
    """Run the built-in uac at `rate` calls/s for `seconds`; returns
    (successful, failed, seconds it took)."""
    calls = int(rate * seconds)
    stat = work / f"{tag}.csv"
    t0 = time.perf_counter()
    subprocess.run(
        ["sipp", "-sn", "uac", "-i", "127.0.0.1", "-p", str(free_port()), "-r", str(rate),
         "-m", str(calls), "-l", str(max(rate * 4, 100)), "-nostdin", "-timeout", f"{seconds + 15}s",
         "-trace_stat", "-stf", str(stat), "-fd", "1",
         "-recv_timeout", "5000", target],
        cwd=work, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    try:
        ok, failed = sipp_stat(stat)
    except (OSError, ValueError, IndexError):
        ok, failed = 0, calls
    return ok, max(failed, calls - ok), elapsed


def sipp_register(target, users, count, rate, work, tag, timeout=300):
    """REGISTER `count` phones (users.csv) at `rate`/s: (seconds, ok, failed)."""
    stat = work / f"{tag}.csv"
    t0 = time.perf_counter()
    subprocess.run(["sipp", "-sf", str(HERE / "register_storm.xml"), "-inf", str(users),
                    "-i", "127.0.0.1", "-p", str(free_port()), "-r", str(rate),
                    "-m", str(count), "-l", "5000", "-nostdin", "-timeout", f"{timeout}s",
                    "-trace_stat", "-stf", str(stat), "-fd", "1", target],
                   cwd=work, capture_output=True)
    dt = time.perf_counter() - t0
    ok, failed = sipp_stat(stat)
    return dt, ok, failed


def users_file(work, name, count, first):
    path = work / name
    path.write_text("SEQUENTIAL\n" + "".join(f"{first + i}\n" for i in range(count)))
    return path


# ---------------------------------------------------------------- rate

def paired_rtt(direct, proxied, seconds, out):
    """Pairs of OPTIONS round trips (ms), one straight to the backend and
    one through the proxy, back to back, the first of the pair alternating;
    appends (direct, proxied) to `out`. sipp's own response times are whole
    milliseconds, too coarse on loopback."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(1.0)
    me = f"127.0.0.1:{s.getsockname()[1]}"

    def one(target, n):
        host, port = target.split(":")
        cid = f"rtt-{n}-{me}"
        msg = sip_request("OPTIONS", f"sip:{target}", me, "sip:rtt@127.0.0.1", f"sip:{target}",
                          cid, n, f"rtt{n}")
        t0 = time.perf_counter()
        s.sendto(msg, (host, int(port)))
        try:
            while True:
                if cid.encode() in s.recv(4096):
                    return (time.perf_counter() - t0) * 1000
        except socket.timeout:
            return None

    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
        if n % 2:
            d = one(direct, 2 * n)
            p = one(proxied, 2 * n + 1)
        else:
            p = one(proxied, 2 * n + 1)
            d = one(direct, 2 * n)
        if d is not None and p is not None:
            out.append((d, p))
        time.sleep(0.005)
    s.close()


def rate_step(target, work, tag, rate, seconds):
    """Whether `target` sustains `rate` calls/s for `seconds`."""
    ok, failed, elapsed = sipp_calls(target, rate, seconds, work, f"{tag}-{rate}")
    total = ok + failed
    bad = failed / total if total else 1
    print(f"  {tag}: {rate} calls/s asked -> {ok} ok, {failed} failed in {elapsed:.2f} s "
          f"({ok / elapsed:.0f} calls/s)", flush=True)
    # Sustained: under 0.1% failed, and the calls did not take much
    # longer than the step (sipp falling behind is not a pass).
    return bad <= 0.001 and elapsed <= seconds * 1.25 + 1


def max_rates(targets, work, steps, seconds):
    """The highest passing step of each target, the ladders interleaved:
    each step is run by every target still passing, one after the other,
    the first of them rotating, so a change in the machine's load falls on
    all of them alike."""
    best = {n: 0 for n in targets}
    going = list(targets)
    for i, rate in enumerate(steps):
        if not going:
            break
        k = i % len(going)
        for name in going[k:] + going[:k]:
            if rate_step(targets[name], work, name, rate, seconds):
                best[name] = rate
            else:
                going.remove(name)
    return best


def scenario_rate(args, edge, work):
    print("\n== rate: highest call rate, CPU per call, paired added round trip", flush=True)
    backend = free_port()
    backend_proc = start(["sipp", "-sn", "uas", "-aa", "-i", "127.0.0.1", "-p", str(backend), "-nostdin"],
                         work / "backend.log")
    kport = free_port()
    kam = kamailio(HERE / "kamailio-forward.cfg", kport, work, "anchor",
                   [f'BACKEND="sip:127.0.0.1:{backend}"'])
    pbxs = [("main", backend)]
    targets = {"kamailio": f"127.0.0.1:{kport}"}
    pids = {"kamailio": lambda: kamailio_pids(kam)}
    procs = []
    # The build under test, and with --compare another build beside it in
    # the same run (same backend, same Kamailio, rounds interleaved).
    edges = [("resilience", edge)]
    if args.compare:
        cwork = work / "compare"
        cwork.mkdir(exist_ok=True)
        other = Edge(str(Path(args.compare).resolve()), cwork, [], "", args.limits_section)
        print(f"  compared build ({args.compare_label}): {other.binary}", flush=True)
        other.detect()
        edges.append((args.compare_label, other))
    for name, e in edges:
        eport, eapi = free_port(), free_port(socket.SOCK_STREAM)
        cfg = e.unlimited(e.base(eport, eapi), pbxs)
        proc = e.run(e.write(cfg, pbxs, f"rate-{name}"), f"edge-rate-{name}")
        procs.append(proc)
        wait(lambda: e.get(eapi, "/api/v1/status")["pbxs"][0]["up"], 10, f"{name} to see the backend")
        targets[name] = f"127.0.0.1:{eport}"
        pids[name] = (lambda p: lambda: [p.pid])(proc)
    time.sleep(0.5)
    edge_names = [n for n, _ in edges]

    steps = [200, 400, 600, 800, 1000, 1200, 1400, 1600, 2000, 2400, 2800, 3200, 4000]
    everyone = lambda: kamailio_pids(kam) + [p.pid for p in procs] + [backend_proc.pid]
    others = wait_quiet(everyone, args.quiet_below, args.quiet_wait)
    fg = Foreign(everyone)
    print(f"  (others used {others:.2f} cores before the steps)", flush=True)
    best = max_rates(targets, work, steps, args.step_seconds)
    print(f"  (others used {fg.cores():.2f} cores during the steps)", flush=True)

    # CPU and added latency at a fixed rate, in rounds alternating which
    # proxy goes first; each round's probe pairs a direct and a proxied
    # round trip taken at the same moment, under that proxy's load.
    rate, secs = args.fixed_rate, 10
    # Each run notes how many cores others kept busy meanwhile; the table
    # keeps the rounds where both runs had the machine to themselves (all
    # rounds when none did), and says which.
    runs = {n: [] for n in targets}   # (cpu per 10k, pairs, failed, foreign cores) per round
    for r in range(args.rounds):
        # Each proxy goes first in turn, the order reversed every other
        # round.
        names = list(targets)
        order = names[r % len(names):] + names[:r % len(names)]
        if (r // len(names)) % 2:
            order.reverse()
        waited = wait_quiet(everyone, args.quiet_below, args.quiet_wait)
        for name in order:
            ps = pids[name]()
            c0 = cpu_seconds(ps)
            fg = Foreign(everyone)
            got = []
            probe = threading.Thread(target=paired_rtt,
                                     args=(f"127.0.0.1:{backend}", targets[name], secs - 2, got))
            probe.start()
            ok, failed, _ = sipp_calls(targets[name], rate, secs, work, f"{name}-fixed-{r}")
            probe.join()
            runs[name].append(((cpu_seconds(ps) - c0) * 10_000 / max(ok, 1), got, failed, fg.cores()))
            diffs = [p - d for d, p in got]
            print(f"  round {r + 1} {name}: CPU {runs[name][-1][0]:.2f} s/10k calls, {failed} failed, "
                  f"{len(got)} pairs, p99 of differences {p99(diffs):.3f} ms; others used "
                  f"{runs[name][-1][3]:.2f} cores (before the round: {waited:.2f})", flush=True)
    for p in procs:
        stop(p)
    stop(kam)
    quiet = [r for r in range(args.rounds)
             if all(runs[n][r][3] < args.quiet_below for n in targets)]
    keep = quiet or list(range(args.rounds))
    cpu = {n: [runs[n][r][0] for r in keep] for n in targets}
    pairs = {n: [x for r in keep for x in runs[n][r][1]] for n in targets}
    fails = {n: sum(runs[n][r][2] for r in range(args.rounds)) for n in targets}
    print(f"\nrounds kept: {len(keep)} of {args.rounds} "
          + (f"(others under {args.quiet_below} cores during both runs)" if quiet
             else f"(none had others under {args.quiet_below} cores: all kept, figures noisy)"))

    print()
    print(f"| proxy | highest rate, <0.1% failed (calls/s, {args.step_seconds} s steps) "
          f"| CPU s per 10,000 calls at {rate}/s (median of {len(keep)}) "
          f"| p99 added round trip ms (p99 of paired differences) | median added ms "
          f"| p99 proxied − p99 direct ms | pairs | failed at {rate}/s |")
    print("|---|---|---|---|---|---|---|---|")
    med_cpu = {n: statistics.median(cpu[n]) for n in targets}
    for name in targets:
        d = [x for x, _ in pairs[name]]
        p = [y for _, y in pairs[name]]
        diffs = [y - x for x, y in pairs[name]]
        print(f"| {name} | {best[name]} | {med_cpu[name]:.2f} | {p99(diffs):.3f} | "
              f"{statistics.median(diffs) if diffs else float('nan'):.3f} | {p99(p) - p99(d):.3f} | "
              f"{len(diffs)} | {fails[name]} |")
    for en in edge_names:
        print(f"| ratio {en} / kamailio | {best[en] / max(best['kamailio'], 1):.2f} "
              f"| {med_cpu[en] / max(med_cpu['kamailio'], 1e-9):.2f} | | | | | |")
    if len(edge_names) > 1:
        a, b = edge_names
        print(f"| ratio {a} / {b} | {best[a] / max(best[b], 1):.2f} "
              f"| {med_cpu[a] / max(med_cpu[b], 1e-9):.2f} | | | | | |")
    for en in edge_names:
        ratios = [x / max(y, 1e-9) for x, y in zip(cpu[en], cpu["kamailio"])]
        print(f"CPU ratio {en} / kamailio per round: {' / '.join(f'{x:.2f}' for x in ratios)} "
              f"(median {statistics.median(ratios):.2f})")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("CPU per round: " + "; ".join(f"{n} " + " / ".join(f"{c:.2f}" for c in cpu[n]) for n in targets))
    # The edges' own CPU per fixed-rate run, in clock ticks (utime+stime
    # from /proc), for a direct A/B of two builds.
    tick = os.sysconf("SC_CLK_TCK")
    for en in edge_names:
        print(f"{en}: CPU ticks per {rate * secs:,}-call run (all rounds): "
              + " / ".join(f"{runs[en][r][0] * rate * secs / 10_000 * tick:.0f}" for r in range(args.rounds)))
    for name in targets:
        d = [x for x, _ in pairs[name]]
        print(f"(straight to the backend during the {name} runs: p99 {p99(d):.3f} ms, "
              f"median {statistics.median(d) if d else float('nan'):.3f} ms)")


# ---------------------------------------------------------------- storm

def scenario_storm(args, edge, work):
    print(f"\n== storm: {args.phones} phones re-register after a failover", flush=True)
    main_port, standby_port = free_port(), free_port()
    kmain = kamailio(FIXTURES / "kamailio-pbx.cfg", main_port, work, "storm-main")
    kamailio(FIXTURES / "kamailio-pbx.cfg", standby_port, work, "storm-standby")
    sport, sapi = free_port(), free_port(socket.SOCK_STREAM)
    pbxs = [("main", main_port), ("standby", standby_port)]
    cfg = edge.unlimited(edge.base(sport, sapi, failover="1s", stable="1h"), pbxs)
    proc = edge.run(edge.write(cfg, pbxs, "storm"), "edge-storm")
    wait(lambda: all(p["up"] for p in edge.get(sapi, "/api/v1/status")["pbxs"]), 10, "both PBXs up")
    users = users_file(work, "storm-users.csv", args.phones, 100000)
    target = f"127.0.0.1:{sport}"
    dt1, ok1, bad1 = sipp_register(target, users, args.phones, args.storm_rate, work, "storm-main")
    print(f"first registration of {args.phones} phones (to the Main): {dt1:.2f} s, {ok1} ok, {bad1} failed")
    stop(kmain)
    wait(lambda: edge.get(sapi, "/api/v1/status")["pbxs"][0]["up"] is False, 10, "the Main seen down")
    # Guests counted by the metrics gauge (whatever paging /api/v1/phones has).
    wait(lambda: edge.away(sapi) == ok1, 30,
         "every phone moved to the Standby")
    dt2, ok2, bad2 = sipp_register(target, users, args.phones, args.storm_rate, work, "storm-failover")
    rss = rss_mb(proc.pid)
    print()
    print("| registration storm after a failover | phones | ok | failed | seconds | REGISTER/s | edge RSS MB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| all phones re-register through the edge to the Standby | {args.phones} | {ok2} | {bad2} "
          f"| {dt2:.2f} | {ok2 / dt2:.0f} | {rss:.1f} |")


# ---------------------------------------------------------------- flood

def flooder(target, src, rate, seconds, res):
    """REGISTERs (a new AOR each) and OPTIONS, alternating, from one
    address at `rate`/s for `seconds`; counts the requests answered."""
    host, port = target.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((src, 0))
    me = f"{src}:{s.getsockname()[1]}"
    answered, refused = set(), set()  # by Call-ID: the registrar's 200s, other final answers
    done = threading.Event()

    def rx():
        s.settimeout(0.2)
        while not done.is_set():
            try:
                data = s.recv(65535).decode(errors="replace")
            except socket.timeout:
                continue
            cid, code = header(data, "Call-ID"), status_of(data)
            if cid and code is not None and 200 <= code < 300:
                answered.add(cid)
            elif cid and code is not None and code >= 300:
                refused.add(cid)

    t = threading.Thread(target=rx)
    t.start()
    sent = 0
    total = int(rate * seconds)
    t0 = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            i = sent
            cid = f"flood-{i}-{me}"
            if i % 2 == 0:
                aor = f"sip:f{i}@pbx.test"
                msg = sip_request("REGISTER", "sip:pbx.test", me, aor, aor, cid, 1, f"fl{i}",
                                  f"Contact: <sip:f{i}@{me}>\r\nExpires: 3600\r\n")
            else:
                msg = sip_request("OPTIONS", "sip:pbx.test", me, f"sip:f{i}@pbx.test", "sip:pbx.test",
                                  cid, 1, f"fl{i}")
            try:
                s.sendto(msg, (host, int(port)))
            except OSError:
                pass
            sent += 1
        time.sleep(0.002)
    res["send_seconds"] = time.perf_counter() - t0
    time.sleep(1.0)  # late answers
    done.set()
    t.join()
    s.close()
    res["sent"] = sent
    res["answered"] = len(answered)
    res["refused"] = len(refused)


def legit_phone(target, src, aor, rate, seconds, out):
    """One phone registering `rate` times a second for `seconds`, each
    REGISTER retransmitted at 0.5, 1.5 and 3.5 s (T1 doubling) and given up
    at 4 s; appends (ok, latency ms from the first send) to `out`."""
    host, port = target.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    me = f"{src}:{s.getsockname()[1]}"
    cid = f"legit-{me}"
    end = time.perf_counter() + seconds
    nxt = time.perf_counter()
    cseq = 0
    while time.perf_counter() < end:
        cseq += 1
        msg = sip_request("REGISTER", "sip:pbx.test", me, aor, aor, cid, cseq, f"lg{cseq}x{me}",
                          f"Contact: <{aor.replace('@pbx.test', '@' + me)}>\r\nExpires: 600\r\n")
        t0 = time.perf_counter()
        resend = [0.5, 1.5, 3.5]
        ok = False
        s.sendto(msg, (host, int(port)))
        while True:
            left = 4.0 - (time.perf_counter() - t0)
            if left <= 0:
                break
            wait_for = min(left, (resend[0] - (time.perf_counter() - t0)) if resend else left)
            s.settimeout(max(wait_for, 0.001))
            try:
                data = s.recv(65535).decode(errors="replace")
            except socket.timeout:
                if resend and time.perf_counter() - t0 >= resend[0]:
                    resend.pop(0)
                    s.sendto(msg, (host, int(port)))
                continue
            if f"{cseq} REGISTER" in (header(data, "CSeq") or "") and (status_of(data) or 0) >= 200:
                ok = status_of(data) < 300
                break
        out.append((ok, (time.perf_counter() - t0) * 1000))
        nxt += 1.0 / rate
        time.sleep(max(0.0, nxt - time.perf_counter()))
    s.close()


def legit_phones(target, n, rate, seconds, out):
    ts = [threading.Thread(target=legit_phone,
                           args=(target, f"127.0.0.{3 + k}", f"sip:legit{k}@pbx.test", rate, seconds, out))
          for k in range(n)]
    for t in ts:
        t.start()
    return ts


def scenario_flood(args, edge, work):
    print(f"\n== flood: {args.flood_rate}/s for {args.flood_seconds} s from one source, "
          f"{args.legit_phones} legitimate phones registering {args.legit_rate}/s each", flush=True)
    rows = []
    for name in ["kamailio", "resilience"]:
        reg_port = free_port()
        reg = kamailio(HERE / "kamailio-registrar.cfg", reg_port, work, f"flood-reg-{name}", shm_mb=256)
        if name == "kamailio":
            port = free_port()
            proxy = kamailio(HERE / "kamailio-pike.cfg", port, work, "flood-pike", [
                f'BACKEND="sip:127.0.0.1:{reg_port}"', f"PIKE_UNIT={args.pike_unit}",
                f"PIKE_DENSITY={args.pike_density}", f"PIKE_LATENCY={args.pike_latency}"])
            pids = lambda: kamailio_pids(proxy)
            limits = (f"pike: sampling_time_unit {args.pike_unit} s, reqs_density_per_unit "
                      f"{args.pike_density}, remove_latency {args.pike_latency} s")
            time.sleep(1.0)
        else:
            port, api = free_port(), free_port(socket.SOCK_STREAM)
            pbxs = [("main", reg_port)]
            cfg = edge.base(port, api)
            fsets = parse_sets(args.flood_set)
            lim, limits = edge.limits(cfg, pbxs, args.pike_unit, args.pike_density, fsets)
            if lim is not None:
                cfg = {**cfg, edge.ls: lim}
            proxy = edge.run(edge.write(cfg, pbxs, "flood", sets=fsets, extra=args.flood_extra),
                             "edge-flood", log="info")
            pids = lambda: [proxy.pid]
            wait(lambda: edge.get(api, "/api/v1/status")["pbxs"][0]["up"], 10, "the edge to see the registrar")
        target = f"127.0.0.1:{port}"
        print(f"  {name}: {limits}", flush=True)
        quiet = []
        for t in legit_phones(target, args.legit_phones, args.legit_rate, args.quiet_seconds, quiet):
            t.join()
        # The flood starts first; the phones register while it runs.
        res = {}
        c0 = cpu_seconds(pids())
        fl = threading.Thread(target=flooder, args=(target, "127.0.0.2", args.flood_rate,
                                                    args.flood_seconds, res))
        fl.start()
        time.sleep(min(1.0, args.flood_seconds / 4))
        during = []
        for t in legit_phones(target, args.legit_phones, args.legit_rate,
                              args.flood_seconds - min(1.0, args.flood_seconds / 4), during):
            t.join()
        fl.join()
        cpu = cpu_seconds(pids()) - c0
        # The edge's RSS; Kamailio's is in shared memory across processes.
        rss = f"{rss_mb(proxy.pid):.1f}" if name == "resilience" else "–"
        if name == "resilience":
            try:
                st = edge.get(api, "/api/v1/status")
                print(f"  edge counters after the flood: dropped {st.get('dropped')}, "
                      f"phones {edge.phones(api)}", flush=True)
            except Exception as e:
                print(f"  (edge status unreadable: {e})")
        stop(proxy)
        stop(reg)
        lat = [ms for ok, ms in during if ok]
        qlat = [ms for ok, ms in quiet if ok]
        row = dict(name=name, limits=limits, sent=res["sent"], answered=res["answered"],
                   send_s=res["send_seconds"], ok=sum(ok for ok, _ in during), n=len(during),
                   p50=pct(lat, 0.5), p99=p99(lat), q_ok=sum(ok for ok, _ in quiet), q_n=len(quiet),
                   q50=pct(qlat, 0.5), q99=p99(qlat), cpu=cpu, rss=rss)
        rows.append(row)
        print(f"  {name}: flood {row['sent']} sent in {row['send_s']:.2f} s, {row['answered']} answered 2xx, "
              f"{res['refused']} refused; "
              f"legit {row['ok']}/{row['n']} ok, p50 {row['p50']:.2f} ms p99 {row['p99']:.2f} ms; "
              f"quiet {row['q_ok']}/{row['q_n']} p50 {row['q50']:.2f} p99 {row['q99']:.2f}; CPU {cpu:.2f} s",
              flush=True)
    print()
    print(f"| proxy (flood {args.flood_rate}/s × {args.flood_seconds} s from one address) | limits "
          "| legitimate REGISTER ok % | p50 ms | p99 ms | quiet p50 / p99 ms | flood stopped % (no 2xx) "
          "| proxy CPU s during the flood | edge RSS MB after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['limits']} | {100 * r['ok'] / max(r['n'], 1):.1f} ({r['ok']}/{r['n']}) "
              f"| {r['p50']:.2f} | {r['p99']:.2f} | {r['q50']:.2f} / {r['q99']:.2f} "
              f"| {100 * (1 - r['answered'] / max(r['sent'], 1)):.2f} ({r['sent'] - r['answered']}/{r['sent']}) | {r['cpu']:.2f} | {r['rss']} |")


# ---------------------------------------------------------------- memory

def shm_used(port):
    """Kamailio's shared memory in use (kamailio-registrar.cfg's `shmstat`)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    me = f"127.0.0.1:{s.getsockname()[1]}"
    cid = f"shm-{time.time()}"
    s.sendto(sip_request("OPTIONS", f"sip:shmstat@127.0.0.1:{port}", me, "sip:bench@127.0.0.1",
                         "sip:shmstat@127.0.0.1", cid, 1, cid), ("127.0.0.1", port))
    try:
        m = re.match(r"SIP/2.0 200 shm used (\d+)", s.recv(4096).decode(errors="replace"))
        return int(m.group(1)) if m else None
    finally:
        s.close()


def scenario_memory(args, edge, work):
    n = args.memory_phones
    print(f"\n== memory: {n} phones registered through the edge", flush=True)
    reg_port = free_port()
    reg = kamailio(HERE / "kamailio-registrar.cfg", reg_port, work, "mem-reg", shm_mb=1024)
    port, api = free_port(), free_port(socket.SOCK_STREAM)
    pbxs = [("main", reg_port)]
    cfg = edge.unlimited(edge.base(port, api), pbxs)
    proc = edge.run(edge.write(cfg, pbxs, "memory"), "edge-memory")
    wait(lambda: edge.get(api, "/api/v1/status")["pbxs"][0]["up"], 10, "the edge to see the registrar")
    time.sleep(1.0)
    rss0, shm0 = rss_mb(proc.pid), shm_used(reg_port)
    phones0 = edge.phones(api)
    users = users_file(work, "mem-users.csv", n, 2_000_000)
    dt, ok, bad = sipp_register(f"127.0.0.1:{port}", users, n, args.memory_rate, work, "memory",
                                timeout=max(120, 3 * n // args.memory_rate))
    time.sleep(1.0)
    rss1, shm1 = rss_mb(proc.pid), shm_used(reg_port)
    phones1 = edge.phones(api)
    stop(proc)
    stop(reg)
    added = max(phones1 - phones0, 0)
    print(f"  {ok} ok, {bad} failed in {dt:.1f} s; edge phones {phones0} -> {phones1}; "
          f"RSS {rss0:.1f} -> {rss1:.1f} MB; Kamailio shm {shm0} -> {shm1}", flush=True)
    print()
    print("| memory per phone | REGISTERs ok / sent | phones held after | before MB | after MB | bytes per phone |")
    print("|---|---|---|---|---|---|")
    per = (rss1 - rss0) * 1024 * 1024 / max(added, 1)
    print(f"| resilience edge (VmRSS) | {ok} / {n} | {phones1} | {rss0:.1f} | {rss1:.1f} | "
          f"{per:.0f} (per phone held) |")
    if shm0 is not None and shm1 is not None:
        print(f"| kamailio registrar usrloc (shm in use) | {ok} / {n} | {ok} contacts | {shm0 / 2**20:.1f} "
              f"| {shm1 / 2**20:.1f} | {(shm1 - shm0) / max(ok, 1):.0f} (per contact) |")


# ---------------------------------------------------------------- poll

class RegisterProbe:
    """One legitimate phone on one UDP socket: REGISTERs one at a time,
    each timed from its first send to its final answer (retransmitted at
    0.5 and 1.5 s, given up at 4 s, as legit_phone does)."""

    def __init__(self, target, aor="sip:pollprobe@pbx.test"):
        self.host, port = target.split(":")
        self.port = int(port)
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        self.me = f"127.0.0.1:{self.s.getsockname()[1]}"
        self.aor = aor
        self.cid = f"pollprobe-{self.me}"
        self.cseq = 0

    def once(self):
        """(ok, ms) of one REGISTER."""
        self.cseq += 1
        cseq = self.cseq
        msg = sip_request("REGISTER", "sip:pbx.test", self.me, self.aor, self.aor, self.cid, cseq,
                          f"pp{cseq}x{self.me}",
                          f"Contact: <{self.aor.replace('@pbx.test', '@' + self.me)}>\r\nExpires: 600\r\n")
        resend = [0.5, 1.5]
        t0 = time.perf_counter()
        self.s.sendto(msg, (self.host, self.port))
        while True:
            el = time.perf_counter() - t0
            if el >= 4.0:
                return False, el * 1000
            self.s.settimeout(max(0.001, min(4.0, resend[0] if resend else 4.0) - el))
            try:
                data = self.s.recv(65535).decode(errors="replace")
            except socket.timeout:
                if resend and time.perf_counter() - t0 >= resend[0]:
                    resend.pop(0)
                    self.s.sendto(msg, (self.host, self.port))
                continue
            code = status_of(data) or 0
            if f"{cseq} REGISTER" in (header(data, "CSeq") or "") and code >= 200:
                return code < 300, (time.perf_counter() - t0) * 1000

    def run(self, seconds, rate, out):
        """REGISTERs at `rate`/s for `seconds`; appends (ok, ms) to `out`."""
        end = time.perf_counter() + seconds
        nxt = time.perf_counter()
        while time.perf_counter() < end:
            out.append(self.once())
            nxt += 1.0 / rate
            time.sleep(max(0.0, nxt - time.perf_counter()))

    def close(self):
        self.s.close()


def list_walker(api, token, polling, quit_, pages, walks, rows, errors, busy, throttled):
    """A client of the edge's phones list (its own process, so its JSON
    work does not hold the probe's interpreter): while `polling` is set,
    walks /api/v1/phones?limit=500 page by page over one keep-alive
    connection, from the start again after the last page."""
    import http.client
    import urllib.parse
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(10)
    except OSError:
        pass
    hdrs = {"Authorization": f"Bearer {token}"} if token else {}
    conn = None
    after = None
    while not quit_.is_set():
        if not polling.wait(0.1):
            continue
        with busy.get_lock():
            busy.value += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
            path = "/api/v1/phones?limit=500" + (f"&after={urllib.parse.quote(after, safe='')}" if after else "")
            conn.request("GET", path, headers=hdrs)
            r = conn.getresponse()
            body = r.read()
            if r.status == 429:
                # Over the edge's page rate: wait as told, count it.
                with throttled.get_lock():
                    throttled.value += 1
                try:
                    wait_s = float(r.getheader("Retry-After") or 1)
                except ValueError:
                    wait_s = 1.0
                quit_.wait(min(wait_s, 5.0))
                continue
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")
            page = json.loads(body)
            with pages.get_lock():
                pages.value += 1
            with rows.get_lock():
                rows.value += len(page["phones"])
            after = page.get("next")
            if not after:
                with walks.get_lock():
                    walks.value += 1
        except Exception:
            with errors.get_lock():
                errors.value += 1
            if conn is not None:
                conn.close()
            conn = None
            after = None
            time.sleep(0.05)
        finally:
            with busy.get_lock():
                busy.value -= 1


def scenario_poll(args, edge, work):
    import multiprocessing as mp
    n = args.poll_phones
    print(f"\n== poll: {n} phones registered through the edge, REGISTER round trip with the phones "
          f"list polled ({args.poll_clients} clients) and without, {args.poll_rounds} rounds of "
          f"{args.poll_phase} s + {args.poll_phase} s", flush=True)
    if not edge.token:
        sys.exit("the poll scenario needs a build with [edge] token_file (the phones list needs the token)")
    reg_port = free_port()
    reg = kamailio(HERE / "kamailio-registrar.cfg", reg_port, work, "poll-reg", shm_mb=1024)
    port, api = free_port(), free_port(socket.SOCK_STREAM)
    pbxs = [("main", reg_port)]
    cfg = edge.base(port, api)
    cfg["phones"]["max_phones"] = str(n + 1000)
    cfg = edge.unlimited(cfg, pbxs)
    proc = edge.run(edge.write(cfg, pbxs, "poll"), "edge-poll")
    wait(lambda: edge.get(api, "/api/v1/status")["pbxs"][0]["up"], 10, "the edge to see the registrar")
    time.sleep(1.0)
    rss_empty = rss_mb(proc.pid)
    users = users_file(work, "poll-users.csv", n, 3_000_000)
    dt, ok, bad = sipp_register(f"127.0.0.1:{port}", users, n, args.poll_rate, work, "poll",
                                timeout=max(120, 3 * n // args.poll_rate))
    goal = min(n, ok)
    end = time.time() + 30
    while edge.phones(api) < goal and time.time() < end:
        time.sleep(0.5)
    held = edge.phones(api)
    print(f"  {ok} ok, {bad} failed in {dt:.1f} s; the edge holds {held} phones"
          + ("" if held >= goal else f" (fewer than the {goal} answered, after 30 s)"), flush=True)

    probe = RegisterProbe(f"127.0.0.1:{port}")
    warm = []
    probe.run(1.0, args.poll_probe_rate, warm)  # registered, flows known
    if not any(o for o, _ in warm):
        sys.exit("the probe phone's REGISTERs are not answered 200 through the edge")

    ctx = mp.get_context("fork")
    polling, quit_ = ctx.Event(), ctx.Event()
    pages, walks, rows, errors, busy, throttled = (ctx.Value("q", 0) for _ in range(6))
    walkers = [ctx.Process(target=list_walker, args=(api, edge.token, polling, quit_,
                                                     pages, walks, rows, errors, busy, throttled),
                           daemon=True)
               for _ in range(args.poll_clients)]
    for w in walkers:
        w.start()
    samples = {"quiet": [], "polled": []}
    cpu = {"quiet": 0.0, "polled": 0.0}
    secs = {"quiet": 0.0, "polled": 0.0}
    rss_before = rss_mb(proc.pid)
    rss_peak = rss_before
    try:
        for r in range(args.poll_rounds):
            # Which phase goes first alternates round by round.
            for phase in (["quiet", "polled"] if r % 2 == 0 else ["polled", "quiet"]):
                if phase == "polled":
                    polling.set()
                    time.sleep(0.05)  # the walkers' first requests under way
                else:
                    polling.clear()
                    t_end = time.time() + 5
                    while busy.value > 0 and time.time() < t_end:
                        time.sleep(0.005)
                c0, t0 = cpu_seconds([proc.pid]), time.perf_counter()
                got = []
                probe.run(args.poll_phase, args.poll_probe_rate, got)
                cpu[phase] += cpu_seconds([proc.pid]) - c0
                secs[phase] += time.perf_counter() - t0
                samples[phase] += got
                rss_peak = max(rss_peak, rss_mb(proc.pid))
                lat = [ms for o, ms in got if o]
                print(f"  round {r + 1} {phase}: {sum(o for o, _ in got)}/{len(got)} ok, "
                      f"p50 {pct(lat, 0.5):.2f} ms, max {max(lat) if lat else float('nan'):.2f} ms; "
                      f"list pages so far {pages.value}, walks {walks.value}", flush=True)
        polling.clear()
        t_end = time.time() + 5
        while busy.value > 0 and time.time() < t_end:
            time.sleep(0.005)
    finally:
        quit_.set()
        polling.clear()
        for w in walkers:
            w.join(3)
            if w.is_alive():
                w.terminate()
                w.join(3)
        probe.close()
    rss_after = rss_mb(proc.pid)
    held_after = edge.phones(api)
    stop(proc)
    stop(reg)
    print(f"  edge RSS {rss_empty:.1f} MB empty, {rss_before:.1f} before polling, {rss_after:.1f} after "
          f"(highest seen {rss_peak:.1f}); list: {walks.value} full walks, {pages.value} pages, "
          f"{rows.value} rows, {errors.value} errors, {throttled.value} answered 429 (over the edge's "
          f"page rate); phones held after {held_after}", flush=True)
    print()
    print(f"| phase ({held} phones held; {args.poll_rounds} rounds of {args.poll_phase} s each, "
          f"order alternating) | REGISTER ok / sent | p50 ms | p99 ms | max ms "
          f"| edge CPU (cores) | list walks / pages ({args.poll_clients} clients, limit=500) "
          f"| edge RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for phase, label, walks_col, rss_col in [
            ("quiet", "quiet (no poller)", "–", f"{rss_before:.1f} (before polling)"),
            ("polled", f"polled ({args.poll_clients} clients walking the list)",
             f"{walks.value} / {pages.value}" + (f" ({errors.value} errors)" if errors.value else "")
             + (f" ({throttled.value} × 429)" if throttled.value else ""),
             f"{rss_after:.1f} (after polling)")]:
        got = samples[phase]
        lat = [ms for o, ms in got if o]
        print(f"| {label} | {sum(o for o, _ in got)} / {len(got)} | {pct(lat, 0.5):.2f} | {p99(lat):.2f} "
              f"| {max(lat) if lat else float('nan'):.2f} | {cpu[phase] / max(secs[phase], 1e-9):.2f} "
              f"| {walks_col} | {rss_col} |")


# ---------------------------------------------------------------- gap

class Callee:
    """A phone registered through the edge that answers every INVITE with
    486 (the time it arrives is what counts) and re-registers at 90% of
    the granted expiry, as phones refresh before the binding lapses, or at
    once when told to by a NOTIFY (`Event: check-sync`), as phones can be
    configured to; other requests get a 200."""

    def __init__(self, edge_target, expires):
        self.host, port = edge_target.split(":")
        self.port = int(port)
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        self.me = f"127.0.0.1:{self.s.getsockname()[1]}"
        self.aor = "sip:2001@pbx.test"
        self.expires = expires
        self.cseq = 0
        self.invites = []       # wall-clock times of INVITEs received
        self.registered = []    # (wall time, granted expiry)
        self.refresh_at = None
        self.requests = {}      # method -> count, what the edge or a PBX sent
        self.prompted = []      # wall-clock times of NOTIFYs asking to re-register
        self.done = threading.Event()
        self.lock = threading.Lock()

    def register(self):
        self.cseq += 1
        self.s.sendto(sip_request("REGISTER", "sip:pbx.test", self.me, self.aor, self.aor,
                                  f"callee-{self.me}", self.cseq, f"cr{self.cseq}x{time.time()}",
                                  f"Contact: <sip:2001@{self.me}>\r\nExpires: {self.expires}\r\n"),
                      (self.host, self.port))

    def loop(self):
        self.s.settimeout(0.05)
        while not self.done.is_set():
            if self.refresh_at is not None and time.time() >= self.refresh_at:
                self.refresh_at = time.time() + 2  # resend if unanswered
                self.register()
            try:
                data, src = self.s.recvfrom(65535)
            except socket.timeout:
                continue
            msg = data.decode(errors="replace")
            code = status_of(msg)
            if code is not None:
                if "REGISTER" in (header(msg, "CSeq") or "") and 200 <= code < 300:
                    g = granted_expiry(msg, self.expires)
                    with self.lock:
                        self.registered.append((time.time(), g))
                    self.refresh_at = time.time() + 0.9 * g
                continue
            method = msg.split(" ", 1)[0]
            self.requests[method] = self.requests.get(method, 0) + 1
            if method == "NOTIFY" and "check-sync" in (header(msg, "Event") or header(msg, "o") or ""):
                self.s.sendto(reply_to(msg, 200, "OK"), src)
                self.prompted.append(time.time())
                self.refresh_at = time.time()
            elif method == "INVITE":
                with self.lock:
                    self.invites.append(time.time())
                self.s.sendto(reply_to(msg, 486, "Busy Here"), src)
            elif method not in ("ACK",):
                self.s.sendto(reply_to(msg, 200, "OK"), src)


class Caller:
    """Dials the callee through the edge, one INVITE every `every` s;
    ACKs the final answers."""

    def __init__(self, edge_target):
        self.host, port = edge_target.split(":")
        self.port = int(port)
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        self.s.settimeout(0.02)
        self.me = f"127.0.0.1:{self.s.getsockname()[1]}"
        self.n = 0
        self.finals = {}

    def dial(self):
        self.n += 1
        cid = f"call-{self.n}-{self.me}"
        self.s.sendto(sip_request("INVITE", "sip:2001@pbx.test", self.me, "sip:3001@pbx.test",
                                  "sip:2001@pbx.test", cid, 1, f"inv{self.n}x{cid}",
                                  f"Contact: <sip:3001@{self.me}>\r\n"), (self.host, self.port))

    def pump(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            try:
                data = self.s.recv(65535).decode(errors="replace")
            except socket.timeout:
                continue
            code = status_of(data)
            if code is None or code < 200:
                continue
            cid = header(data, "Call-ID") or ""
            self.finals[cid] = code
            if code >= 300:
                via = header(data, "Via")
                ack = (f"ACK sip:2001@pbx.test SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
                       f"From: {header(data, 'From')}\r\nTo: {header(data, 'To')}\r\nCall-ID: {cid}\r\n"
                       f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
                self.s.sendto(ack.encode(), (self.host, self.port))


def scenario_gap(args, edge, work):
    print(f"\n== gap: callee registered for {args.gap_expires} s, Main killed, a call every "
          f"{args.gap_dial} s", flush=True)
    main_port, standby_port = free_port(), free_port()
    kmain = kamailio(HERE / "kamailio-registrar.cfg", main_port, work, "gap-main")
    kstandby = kamailio(HERE / "kamailio-registrar.cfg", standby_port, work, "gap-standby")
    port, api = free_port(), free_port(socket.SOCK_STREAM)
    pbxs = [("main", main_port), ("standby", standby_port)]
    cfg = edge.base(port, api, failover="1s", stable="1h")
    proc = edge.run(edge.write(cfg, pbxs, "gap", extra=args.gap_extra), "edge-gap", log="info")
    wait(lambda: all(p["up"] for p in edge.get(api, "/api/v1/status")["pbxs"]), 10, "both PBXs up")
    target = f"127.0.0.1:{port}"
    callee, caller = Callee(target, args.gap_expires), Caller(target)
    t = threading.Thread(target=callee.loop)
    t.start()
    try:
        callee.register()
        wait(lambda: callee.registered, 5, "the callee registered through the edge")
        granted = callee.registered[-1][1]
        # The path works before the failover: a call reaches the callee.
        caller.dial()
        caller.pump(1.0)
        wait(lambda: callee.invites, 5, "a call to reach the callee through the Main")
        before = len(callee.invites)
        t_kill = time.time()
        stop(kmain)
        moved_at = None
        first = None
        cap_end = None
        nxt = time.time()
        while True:
            now = time.time()
            if now >= nxt:
                caller.dial()
                nxt += args.gap_dial
            caller.pump(0.05)
            if moved_at is None:
                try:
                    for m in edge.get(api, "/api/v1/status").get("moves", []):
                        if m.get("aor") == callee.aor and m.get("to") == "standby":
                            moved_at = m["at_ms"] / 1000
                            cap_end = moved_at + args.gap_cap
                except Exception:
                    pass
            with callee.lock:
                if len(callee.invites) > before:
                    first = callee.invites[before]
            if first is not None and moved_at is not None:
                break
            if cap_end is not None and time.time() > cap_end:
                break
            if moved_at is None and time.time() > t_kill + 30:
                sys.exit("the edge never moved the callee to the Standby")
        refreshes = [w for w, _ in callee.registered if w > t_kill]
    finally:
        callee.done.set()
        t.join()
        stop(proc)
        stop(kstandby)
    print(f"  granted expiry {granted} s; Main killed; callee moved {moved_at - t_kill:.2f} s after the kill; "
          f"{caller.n} INVITEs sent; callee's own re-registrations after the kill: "
          f"{', '.join(f'{w - t_kill:.1f} s' for w in refreshes) or 'none'}; requests it received: "
          f"{callee.requests}; NOTIFYs asking it to re-register: "
          f"{', '.join(f'{w - t_kill:.1f} s' for w in callee.prompted) or 'none'}", flush=True)
    print()
    print("| incoming-call gap after a failover | expiry granted s | kill → edge moves the callee s "
          "| edge move → callee receives an INVITE s | calls tried |")
    print("|---|---|---|---|---|")
    gap = f"{first - moved_at:.2f}" if first is not None else f"none within {args.gap_cap} s (capped)"
    print(f"| callee registered through the edge, Main killed, a call every {args.gap_dial} s "
          f"| {granted} | {moved_at - t_kill:.2f} | {gap} | {caller.n} |")


# ---------------------------------------------------------------- main

def parse_sets(items):
    out = []
    for it in items:
        if "=" not in it or "." not in it.split("=", 1)[0]:
            sys.exit(f"--edge-set expects SECTION.KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        sec, key = k.strip().rsplit(".", 1)
        out.append((sec, key, v.strip()))
    return out


def main():
    paras = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(description=paras[0].rsplit(" Scenarios", 1)[0],
                                 epilog="scenarios (run all, or name some):\n" + paras[1] + "\n\n" + paras[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help=f"any of {', '.join(SCENARIOS)} (default: all, in that order)")
    ap.add_argument("--binary", help="the resilience binary to measure (default: build this checkout's "
                                     "release binary)")
    ap.add_argument("--edge-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a line added to the edge's config in every scenario (TOML value, e.g. "
                         "limits.window='\"2s\"'); also BENCH_EDGE_SET, ';'-separated")
    ap.add_argument("--edge-extra", default=os.environ.get("BENCH_EDGE_EXTRA", ""),
                    help="raw TOML appended to the edge's config (also BENCH_EDGE_EXTRA)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    g = ap.add_argument_group("rate")
    g.add_argument("--step-seconds", type=int, default=5)
    g.add_argument("--fixed-rate", type=int, default=300)
    g.add_argument("--rounds", type=int, default=5, help="fixed-rate rounds per proxy, order alternating")
    g.add_argument("--compare", metavar="BINARY",
                   help="another resilience build measured beside the first in the same run")
    g.add_argument("--compare-label", default="resilience-compared", help="its name in the tables")
    g.add_argument("--quiet-below", type=float, default=0.3,
                   help="a round counts when other users kept under this many cores busy")
    g.add_argument("--quiet-wait", type=float, default=60,
                   help="seconds to wait, before each round, for the machine to be that quiet")
    g = ap.add_argument_group("storm")
    g.add_argument("--phones", type=int, default=10_000)
    g.add_argument("--storm-rate", type=int, default=2000)
    g = ap.add_argument_group("flood")
    g.add_argument("--flood-rate", type=int, default=5000, help="flood requests per second")
    g.add_argument("--flood-seconds", type=float, default=10)
    g.add_argument("--legit-phones", type=int, default=10, help="legitimate phones, one address each")
    g.add_argument("--legit-rate", type=float, default=5, help="REGISTERs per second per phone")
    g.add_argument("--quiet-seconds", type=float, default=4, help="phones alone first, for reference")
    g.add_argument("--pike-unit", type=int, default=2, help="pike's sampling_time_unit, s (and the edge's window)")
    g.add_argument("--pike-density", type=int, default=16,
                   help="pike's reqs_density_per_unit (and the edge's threshold)")
    g.add_argument("--pike-latency", type=int, default=4, help="pike's remove_latency, s")
    g.add_argument("--flood-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="an edge config line for the flood row only (e.g. the build's own limit keys)")
    g.add_argument("--flood-extra", default="", help="raw TOML for the edge in the flood rows only")
    g.add_argument("--limits-section", default="limits", help="the edge's flood-limit section")
    g = ap.add_argument_group("memory")
    g.add_argument("--memory-phones", type=int, default=100_000)
    g.add_argument("--memory-rate", type=int, default=2500)
    g = ap.add_argument_group("gap")
    g.add_argument("--gap-expires", type=int, default=60, help="the callee's registration expiry, s")
    g.add_argument("--gap-cap", type=float, default=None, help="give up this long after the move (default: the expiry)")
    g.add_argument("--gap-dial", type=float, default=0.5, help="seconds between calls")
    g.add_argument("--gap-extra", default="", help="raw TOML for the edge in the gap row only")
    g = ap.add_argument_group("poll")
    g.add_argument("--poll-phones", type=int, default=150_000, help="distinct phones registered first (default %(default)s)")
    g.add_argument("--poll-rate", type=int, default=2500, help="their REGISTERs per second, sipp (default %(default)s)")
    g.add_argument("--poll-clients", type=int, default=2, help="clients walking the phones list (default %(default)s)")
    g.add_argument("--poll-rounds", type=int, default=6, help="rounds of one quiet and one polled phase (default %(default)s)")
    g.add_argument("--poll-phase", type=float, default=2.0, help="seconds per phase (default %(default)s)")
    g.add_argument("--poll-probe-rate", type=float, default=40,
                   help="the probe phone's REGISTERs per second, one at a time (default %(default)s)")
    args = ap.parse_args()
    chosen = args.scenarios or SCENARIOS
    for s in chosen:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    if args.gap_cap is None:
        args.gap_cap = args.gap_expires
    sets = [s for s in os.environ.get("BENCH_EDGE_SET", "").split(";") if s.strip()] + args.edge_set

    need("sipp", "sip-tester")
    need("kamailio", "kamailio")
    if args.binary:
        binary = str(Path(args.binary).resolve())
    else:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "resilience"], cwd=ROOT, check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        binary = str(target / "release/resilience")
    work = Path(tempfile.mkdtemp(prefix="resedge-"))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"binary {binary}, work {work}", flush=True)
    edge = Edge(binary, work, parse_sets(sets), args.edge_extra, args.limits_section)
    # Stopped from outside (even in the background, where SIGINT is
    # ignored): still stop every process started, by pid.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    try:
        edge.detect()
        for s in SCENARIOS:
            if s in chosen:
                print(f"\n(load average {os.getloadavg()[0]:.1f} before {s})", flush=True)
                globals()[f"scenario_{s}"](args, edge, work)
                for p in reversed(started):
                    stop(p)
    finally:
        for p in reversed(started):
            stop(p)
        if args.keep:
            print(f"logs and configs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
