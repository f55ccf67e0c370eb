#!/usr/bin/env python3
"""bench/edge: the Resilience SIP edge against Kamailio as a stateless
forwarder (the anchor), same backend, same machine, same run.

1. Highest call rate each sustains with under 0.1% failed calls: sipp's
   built-in uac (INVITE/100/180/200/ACK/BYE/200) through the proxy to a
   sipp uas (which also answers the edge's OPTIONS probes, -aa), rate raised
   step by step, each step bounded in time.
2. CPU seconds of the proxy per 10,000 calls at one fixed rate both sustain
   (from /proc: the edge's process, Kamailio's main process and workers).
3. p99 round trip of OPTIONS sent one at a time through each proxy while
   the fixed-rate calls run, minus the same straight to the backend: the
   latency each one adds (sipp's response times are whole milliseconds).
4. Registration storm: 10,000 phones registered through the edge to a
   Kamailio registrar (the Main), the Main stopped, and once the phones are
   the Standby's guests all 10,000 re-register: time and failures printed,
   and the edge's RSS with 10,000 phones in its table.

Needs root, sipp (sip-tester) and kamailio (installed with apt-get when
missing). Usage: python3 bench/edge/run.py [--step-seconds 5] [--phones 10000]
"""

import argparse
import json
import os
import shutil
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
started = []  # every process this bench starts, stopped by pid at the end


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


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def kamailio(cfg, port, work, name, defines=()):
    rundir = work / name
    rundir.mkdir(exist_ok=True)
    args = ["kamailio", "-f", str(cfg), "-DD", "-E", "-n", "1", "-m", "64", "-M", "8",
            "-l", f"udp:127.0.0.1:{port}", "-Y", str(rundir), "-w", str(rundir)]
    for d in defines:
        args += ["-A", d]
    return start(args, work / f"{name}.log")


def sipp_calls(target, rate, seconds, work, tag):
    """Run the built-in uac at `rate` calls/s for `seconds`; returns
    (successful, failed, seconds it took)."""
    calls = int(rate * seconds)
    stat = work / f"{tag}.csv"
    t0 = time.perf_counter()
    r = subprocess.run(
        ["sipp", "-sn", "uac", "-i", "127.0.0.1", "-p", str(free_port()), "-r", str(rate),
         "-m", str(calls), "-l", str(max(rate * 4, 100)), "-nostdin", "-timeout", f"{seconds + 15}s",
         "-trace_stat", "-stf", str(stat), "-fd", "1",
         "-recv_timeout", "5000", target],
        cwd=work, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    ok = failed = 0
    try:
        lines = [l for l in stat.read_text().splitlines() if l.strip()]
        head = lines[0].split(";")
        last = lines[-1].split(";")
        ok = int(last[head.index("SuccessfulCall(C)")])
        failed = int(last[head.index("FailedCall(C)")])
    except (OSError, ValueError, IndexError):
        failed = calls
    failed = max(failed, calls - ok)
    return ok, failed, elapsed


def rtt_probe(target, seconds, out):
    """OPTIONS one at a time through `target` for `seconds`, each answered
    by the backend; appends round-trip times in ms to `out` (sipp's own
    response times are whole milliseconds, too coarse on loopback)."""
    host, port = target.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(1.0)
    me = s.getsockname()[1]
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
        msg = (f"OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKrtt{n}\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:rtt@127.0.0.1>;tag=r{n}\r\nTo: <sip:{target}>\r\n"
               f"Call-ID: rtt-{n}-{me}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        t0 = time.perf_counter()
        s.sendto(msg, (host, int(port)))
        try:
            while True:
                data = s.recv(4096)
                if f"rtt-{n}-{me}".encode() in data:
                    out.append((time.perf_counter() - t0) * 1000)
                    break
        except socket.timeout:
            pass
        time.sleep(0.005)
    s.close()


def p99(xs):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def max_rate(target, work, tag, steps, seconds):
    best = 0
    for rate in steps:
        ok, failed, elapsed = sipp_calls(target, rate, seconds, work, f"{tag}-{rate}")
        total = ok + failed
        bad = failed / total if total else 1
        achieved = ok / elapsed
        print(f"  {tag}: {rate} calls/s asked -> {ok} ok, {failed} failed in {elapsed:.2f} s "
              f"({achieved:.0f} calls/s)", flush=True)
        # Sustained: under 0.1% failed, and the calls did not take much
        # longer than the step (sipp falling behind is not a pass).
        if bad > 0.001 or elapsed > seconds * 1.25 + 1:
            break
        best = rate
    return best


def edge_config(work, sip, api, pbxs, failover="1s", stable="2s"):
    text = f"""[edge]
sip_listen = "127.0.0.1:{sip}"
api_listen = "127.0.0.1:{api}"
[health]
interval = "200ms"
timeout = "300ms"
[phones]
failover_after = "{failover}"
failback_stable = "{stable}"
# The bench sends from one address at the rates it measures: no per-source
# rate limit here (the flood rows set their own).
[limits]
max_per_window = 4000000000
"""
    for name, port in pbxs:
        text += f'[[pbx]]\nname = "{name}"\nsip = "127.0.0.1:{port}"\n'
    path = work / f"edge-{sip}.toml"
    path.write_text(text)
    return path


def api_get(api, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{api}{path}", timeout=2) as r:
        return json.load(r)


def wait(cond, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--step-seconds", type=int, default=5)
    ap.add_argument("--fixed-rate", type=int, default=300)
    ap.add_argument("--phones", type=int, default=10_000)
    ap.add_argument("--storm-rate", type=int, default=2000)
    args = ap.parse_args()
    need("sipp", "sip-tester")
    need("kamailio", "kamailio")
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "resilience"], cwd=ROOT, check=True)
    binary = str(ROOT / "target/release/resilience")
    work = Path(tempfile.mkdtemp(prefix="resedge-"))
    try:
        backend = free_port()
        start(["sipp", "-sn", "uas", "-aa", "-i", "127.0.0.1", "-p", str(backend), "-nostdin"],
              work / "backend.log")
        kport = free_port()
        kam = kamailio(HERE / "kamailio-forward.cfg", kport, work, "anchor",
                       [f'BACKEND="sip:127.0.0.1:{backend}"'])
        eport, eapi = free_port(), free_port(socket.SOCK_STREAM)
        edge = start([binary, "edge", "--config", str(edge_config(work, eport, eapi, [("main", backend)]))],
                     work / "edge.log", env={**os.environ, "RUST_LOG": "warn"})
        wait(lambda: api_get(eapi, "/api/v1/status")["pbxs"][0]["up"], 10, "the edge to see the backend")
        time.sleep(0.5)
        targets = {"kamailio": f"127.0.0.1:{kport}", "resilience": f"127.0.0.1:{eport}"}

        # 1. Highest sustained rate.
        steps = [200, 400, 600, 800, 1000, 1200, 1400, 1600, 2000, 2400, 2800, 3200, 4000]
        best = {}
        for name, target in targets.items():
            best[name] = max_rate(target, work, name, steps, args.step_seconds)

        # 2 and 3. CPU per 10,000 calls and added latency at a fixed rate.
        rate, secs = args.fixed_rate, 10
        def under_load(target, tag):
            rtts = []
            probe = threading.Thread(target=rtt_probe, args=(target, secs - 2, rtts))
            probe.start()
            ok, failed, _ = sipp_calls(target, rate, secs, work, tag)
            probe.join()
            return ok, failed, rtts

        _, _, direct = under_load(f"127.0.0.1:{backend}", "direct")
        cpu, lat, fails = {}, {}, {}
        for name, target in targets.items():
            pids = [edge.pid] if name == "resilience" else [kam.pid] + children_of(kam.pid)
            c0 = cpu_seconds(pids)
            ok, failed, rtts = under_load(target, f"{name}-fixed")
            cpu[name] = (cpu_seconds(pids) - c0) * 10_000 / max(ok, 1)
            lat[name] = p99(rtts) - p99(direct)
            fails[name] = failed
        print()
        print(f"| proxy | highest rate, <0.1% failed (calls/s, {args.step_seconds} s steps) "
              f"| CPU s per 10,000 calls at {rate}/s | p99 added round trip ms under {rate} calls/s | failed at {rate}/s |")
        print("|---|---|---|---|---|")
        for name in targets:
            print(f"| {name} | {best[name]} | {cpu[name]:.2f} | {lat[name]:.3f} | {fails[name]} |")
        print(f"| ratio resilience / kamailio | {best['resilience'] / max(best['kamailio'], 1):.2f} "
              f"| {cpu['resilience'] / max(cpu['kamailio'], 1e-9):.2f} | | |")
        print(f"(straight to the backend: p99 {p99(direct):.3f} ms over {len(direct)} round trips)")
        stop(edge)
        stop(kam)

        # 4. Registration storm after a failover.
        main_port, standby_port = free_port(), free_port()
        kmain = kamailio(FIXTURES / "kamailio-pbx.cfg", main_port, work, "pbx-main")
        kamailio(FIXTURES / "kamailio-pbx.cfg", standby_port, work, "pbx-standby")
        sport, sapi = free_port(), free_port(socket.SOCK_STREAM)
        storm_edge = start([binary, "edge", "--config",
                            str(edge_config(work, sport, sapi, [("main", main_port), ("standby", standby_port)],
                                            failover="1s", stable="1h"))],
                           work / "storm-edge.log", env={**os.environ, "RUST_LOG": "warn"})
        wait(lambda: all(p["up"] for p in api_get(sapi, "/api/v1/status")["pbxs"]), 10, "both PBXs up")
        users = work / "users.csv"
        users.write_text("SEQUENTIAL\n" + "".join(f"{100000 + i}\n" for i in range(args.phones)))

        def storm(tag):
            stat = work / f"{tag}.csv"
            t0 = time.perf_counter()
            subprocess.run(["sipp", "-sf", str(HERE / "register_storm.xml"), "-inf", str(users),
                            "-i", "127.0.0.1", "-p", str(free_port()), "-r", str(args.storm_rate),
                            "-m", str(args.phones), "-l", "5000", "-nostdin", "-timeout", "120s",
                            "-trace_stat", "-stf", str(stat), "-fd", "1", f"127.0.0.1:{sport}"],
                           cwd=work, capture_output=True)
            dt = time.perf_counter() - t0
            lines = [l for l in stat.read_text().splitlines() if l.strip()]
            head, last = lines[0].split(";"), lines[-1].split(";")
            return dt, int(last[head.index("SuccessfulCall(C)")]), int(last[head.index("FailedCall(C)")])

        dt1, ok1, bad1 = storm("storm-main")
        print(f"\nfirst registration of {args.phones} phones (to the Main): {dt1:.2f} s, {ok1} ok, {bad1} failed")
        stop(kmain)
        wait(lambda: api_get(sapi, "/api/v1/status")["pbxs"][0]["up"] is False, 10, "the Main seen down")
        wait(lambda: sum(1 for p in api_get(sapi, "/api/v1/phones")["phones"] if p["serving"] == "standby")
             == args.phones, 20, "every phone moved to the Standby")
        dt2, ok2, bad2 = storm("storm-failover")
        rss = rss_mb(storm_edge.pid)
        print()
        print("| registration storm after a failover | phones | ok | failed | seconds | REGISTER/s | edge RSS MB |")
        print("|---|---|---|---|---|---|---|")
        print(f"| all phones re-register through the edge to the Standby | {args.phones} | {ok2} | {bad2} "
              f"| {dt2:.2f} | {ok2 / dt2:.0f} | {rss:.1f} |")
    finally:
        for p in reversed(started):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
