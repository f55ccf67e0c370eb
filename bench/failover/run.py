#!/usr/bin/env python3
"""bench/failover: time from SIGKILL of the active node to the standby's
services started, Resilience against keepalived (VRRPv3), side by side.

Both run in the same two network namespaces joined by a veth pair
(192.0.2.0/24, TEST-NET-1, never routed), with the same detection window:
heartbeat interval = advert_int = 200 ms, failover_after = keepalived's
Master_Down_Interval = 3 x 200 ms + skew (priority 100: 122 ms) = 722 ms.
The "services" of each side are one command that writes the time it ran.

Run i kills the active side at the same phase for both systems: phase_i
after one of its heartbeats reached the standby (killer.py watches the
veth), phase_i drawn uniformly in [0, 180) ms. With a random kill point per
system, where the kill falls moves each median by +-15 ms from pass to pass
and hides a few milliseconds of real difference; paired phases leave only
each system's own overhead: the time from "window elapsed since the last
heartbeat heard" to its services started.

A second table times a graceful stop of the active side: SIGTERM, what
`systemctl stop` sends. keepalived's master then sends a priority-0 advert
and the backup takes over after its skew time; a Resilience node sends a
"leaving" heartbeat, stops its services and says so, and its peer starts.
Same namespaces, same window, same run order alternating.

Needs root, iproute2 and keepalived (installed with apt-get when missing).
Usage: python3 bench/failover/run.py [--runs 20]
"""

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).resolve().parent / "killer.py"
PHASE_MAX_MS = 180
INTERVAL_MS = 200
PRIORITY_BACKUP = 100
SKEW_MS = (256 - PRIORITY_BACKUP) * INTERVAL_MS / 256
WINDOW_MS = 3 * INTERVAL_MS + SKEW_MS  # 721.875 ms
NS = [f"resbench-a-{os.getpid()}", f"resbench-b-{os.getpid()}"]
ADDR = ["192.0.2.1", "192.0.2.2"]
started = []  # every process this bench starts, killed by pid at the end


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, **kw)


def need(binary, package):
    if shutil.which(binary):
        return
    sh("apt-get", "update", "-q")
    sh("apt-get", "install", "-y", "-q", package)


def netns_setup():
    for ns in NS:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "rbA", "netns", NS[0], "type", "veth", "peer", "name", "rbB", "netns", NS[1])
    for ns, dev, addr in [(NS[0], "rbA", ADDR[0]), (NS[1], "rbB", ADDR[1])]:
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")


def cleanup():
    for p in started:
        try:
            p.kill()
            p.wait(timeout=5)
        except Exception:
            pass
    for ns in NS:
        sh("ip", "netns", "del", ns, check=False, stderr=subprocess.DEVNULL)


def spawn(ns, args, log):
    p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    started.append(p)
    return p


def kill_at_phase(victim, phase_ms):
    """SIGKILL `victim`'s process group phase_ms after one of its heartbeats
    reached the standby; returns killer.py's times."""
    out = subprocess.run(["ip", "netns", "exec", NS[1], sys.executable, str(KILLER), "rbB", ADDR[0],
                          str(victim.pid), f"{phase_ms:.3f}"], capture_output=True, text=True, timeout=30)
    victim.wait()
    k = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {"error": out.stderr}
    if "error" in k:
        raise RuntimeError(f"killer: {k['error']}")
    return k


def wait_file(path, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and path.stat().st_size > 0:
            return True
        time.sleep(0.001)
    return False


def kill_tree(p):
    """SIGKILL the process and every process of its session (keepalived forks)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


# ---- keepalived --------------------------------------------------------

def keepalived_conf(work, i, me, run):
    state, prio, dev = ("MASTER", 200, "rbA") if me == 0 else ("BACKUP", PRIORITY_BACKUP, "rbB")
    notify = work / f"ka-notify-{me}.sh"
    notify.write_text(f"#!/bin/sh\ndate +%s.%N > {work}/ka-master-{me}-{run}\n")
    notify.chmod(0o755)
    conf = work / f"ka-{me}.conf"
    conf.write_text(f"""
global_defs {{
    vrrp_version 3
    script_user root
    enable_script_security
}}
vrrp_instance VI_1 {{
    state {state}
    interface {dev}
    virtual_router_id 51
    priority {prio}
    advert_int {INTERVAL_MS / 1000}
    notify_master {notify}
    virtual_ipaddress {{
        192.0.2.100/24
    }}
}}
""")
    return conf


def keepalived_run(work, run, phase, log):
    procs = []
    for me in (0, 1):
        conf = keepalived_conf(work, me, me, run)
        # Fresh pid files each run: a SIGKILLed keepalived leaves its own behind.
        pid = work / f"ka-{me}-{run}.pid"
        vpid = work / f"ka-{me}-{run}-vrrp.pid"
        procs.append(spawn(NS[me], ["keepalived", "--dont-fork", "--log-console", "--vrrp", "-f", str(conf),
                                    "-p", str(pid), "-r", str(vpid), "-c", str(work / f"ka-{me}-{run}-chk.pid")],
                           log))
    if not wait_file(work / f"ka-master-0-{run}", 10):
        raise RuntimeError("keepalived master never became master")
    time.sleep(1.0)
    k = kill_at_phase(procs[0], phase)
    ok = wait_file(work / f"ka-master-1-{run}", 10)
    kill_tree(procs[1])
    if not ok:
        raise RuntimeError("keepalived backup never took over")
    t1 = float((work / f"ka-master-1-{run}").read_text())
    sh("ip", "-n", NS[1], "addr", "flush", "dev", "rbB", "to", "192.0.2.100/32", check=False)
    sh("ip", "-n", NS[0], "addr", "flush", "dev", "rbA", "to", "192.0.2.100/32", check=False)
    return timing(k, t1)


def timing(k, t1):
    """(kill -> services started, overhead beyond the window, late heartbeats), ms."""
    return (t1 - k["kill"]) * 1000, (t1 - k["last"]) * 1000 - WINDOW_MS, k["late"]


def keepalived_stop_run(work, run, log):
    """SIGTERM to the master (systemctl stop): ms until the backup's notify_master ran."""
    tag = f"stop{run}"
    procs = []
    for me in (0, 1):
        conf = keepalived_conf(work, me, me, tag)
        procs.append(spawn(NS[me], ["keepalived", "--dont-fork", "--log-console", "--vrrp", "-f", str(conf),
                                    "-p", str(work / f"ka-{me}-{tag}.pid"), "-r", str(work / f"ka-{me}-{tag}-vrrp.pid"),
                                    "-c", str(work / f"ka-{me}-{tag}-chk.pid")], log))
    if not wait_file(work / f"ka-master-0-{tag}", 10):
        raise RuntimeError("keepalived master never became master")
    time.sleep(1.0)
    t0 = time.time()
    os.kill(procs[0].pid, signal.SIGTERM)  # `ip netns exec` execs keepalived: same pid
    ok = wait_file(work / f"ka-master-1-{tag}", 10)
    try:
        procs[0].wait(timeout=10)
    except subprocess.TimeoutExpired:
        kill_tree(procs[0])
    kill_tree(procs[1])
    sh("ip", "-n", NS[1], "addr", "flush", "dev", "rbB", "to", "192.0.2.100/32", check=False)
    sh("ip", "-n", NS[0], "addr", "flush", "dev", "rbA", "to", "192.0.2.100/32", check=False)
    if not ok:
        raise RuntimeError("keepalived backup never took over after the master's stop")
    return (float((work / f"ka-master-1-{tag}").read_text()) - t0) * 1000


# ---- resilience ----------------------------------------------------------

def node_conf(work, me, run):
    name, peer = ("main", "standby") if me == 0 else ("standby", "main")
    conf = work / f"res-{name}.toml"
    conf.write_text(f"""
[node]
name = "{name}"
type = "{name}"
state_dir = "{work}/state-{name}-{run}"
[peer]
name = "{peer}"
address = "{ADDR[1 - me]}:7400"
[heartbeat]
listen = "{ADDR[me]}:7400"
interval = "{INTERVAL_MS}ms"
failover_after = "{WINDOW_MS * 1000:.0f}us"
startup_wait = "{WINDOW_MS * 1000:.0f}us"
key_file = "{work}/cluster.key"
[failback]
policy = "manual"
[[service]]
name = "pbx"
start = "date +%s.%N > {work}/res-up-{name}-{run}"
stop = "true"
[api]
listen = "127.0.0.1:7480"
token_file = "{work}/api.token"
""")
    return conf


def resilience_run(binary, work, run, phase, log):
    procs = []
    for me in (0, 1):
        conf = node_conf(work, me, run)
        procs.append(spawn(NS[me], [str(binary), "node", "--config", str(conf)], log))
    if not wait_file(work / f"res-up-main-{run}", 10):
        raise RuntimeError("resilience main never became active")
    time.sleep(1.0)
    k = kill_at_phase(procs[0], phase)
    ok = wait_file(work / f"res-up-standby-{run}", 10)
    if not ok:
        kill_tree(procs[1])
        raise RuntimeError("resilience standby never took over")
    t1 = float((work / f"res-up-standby-{run}").read_text())
    detect = detection_to_start(binary, work, run)
    rss = None
    if run == 0:
        # Idle memory: the surviving node, after a few quiet seconds.
        time.sleep(3)
        rss = rss_kb(procs[1])
    kill_tree(procs[1])
    return timing(k, t1), rss, detect


def resilience_stop_run(binary, work, run, log):
    """SIGTERM to the active node: ms until the standby's services started,
    and whether the stopped node exited by itself."""
    tag = f"stop{run}"
    procs = []
    for me in (0, 1):
        conf = node_conf(work, me, tag)
        procs.append(spawn(NS[me], [str(binary), "node", "--config", str(conf)], log))
    if not wait_file(work / f"res-up-main-{tag}", 10):
        raise RuntimeError("resilience main never became active")
    time.sleep(1.0)
    t0 = time.time()
    os.kill(procs[0].pid, signal.SIGTERM)  # `ip netns exec` execs the node: same pid
    ok = wait_file(work / f"res-up-standby-{tag}", 10)
    try:
        exited = procs[0].wait(timeout=15) == 0
    except subprocess.TimeoutExpired:
        kill_tree(procs[0])
        exited = False
    kill_tree(procs[1])
    if not ok:
        raise RuntimeError("resilience standby never took over after the main's stop")
    return (float((work / f"res-up-standby-{tag}").read_text()) - t0) * 1000, exited


def detection_to_start(binary, work, run):
    """From the standby's own history: the silence verdict to the services up."""
    out = subprocess.run(["ip", "netns", "exec", NS[1], str(binary), "events", "--json", "--limit", "50",
                          "--api", "http://127.0.0.1:7480"], capture_output=True, text=True)
    try:
        import json
        events = json.loads(out.stdout)["events"]
    except Exception:
        return None
    silent = [e["at_ms"] for e in events if e["kind"] == "peer_silent"]
    up = [e["at_ms"] for e in events if e["kind"] == "active" and "to: true" in e["text"].lower()]
    if not silent or not up:
        return None
    return max(up) - max(silent)


def rss_kb(p):
    """VmRSS of the node under `ip netns exec` (its only child)."""
    kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    pid = kids[0] if kids else str(p.pid)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def pct(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def false_failover_rows():
    """The simulator's false-failover rate for this same window."""
    out = subprocess.run(
        ["cargo", "test", "-q", "--release", "-p", "resilience-core", "--test", "random",
         "false_failover_rate_by_loss", "--", "--nocapture"],
        cwd=ROOT, capture_output=True, text=True)
    return [l for l in out.stderr.splitlines() if l.startswith("|")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs) and print its path")
    ap.add_argument("--stop-runs", type=int, default=None, help="graceful-stop runs (default: --runs)")
    ap.add_argument("--only-stop", action="store_true", help="only the graceful-stop table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/failover needs root (network namespaces)")
    need("keepalived", "keepalived")
    need("ip", "iproute2")
    sh("cargo", "build", "-q", "--release", "-p", "resilience", cwd=ROOT)
    binary = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "resilience"
    work = Path(tempfile.mkdtemp(prefix="resbench-"))
    # The node refuses secrets group or others may read, and tokens under 32 characters.
    for name, text in (("cluster.key", "ab" * 32), ("api.token", "bench-token-" + "0" * 32)):
        (work / name).write_text(text + "\n")
        (work / name).chmod(0o600)
    log = open(work / "bench.log", "w")
    ka, res, rss, detect = [], [], None, []  # ka/res: (kill->up, overhead, late) per run
    ka_stop, res_stop, res_exited = [], [], 0
    stop_runs = args.runs if args.stop_runs is None else args.stop_runs
    try:
        netns_setup()
        for run in range(stop_runs):
            for first in ((0, 1) if run % 2 == 0 else (1, 0)):
                if first == 0:
                    ka_stop.append(keepalived_stop_run(work, run, log))
                else:
                    t, exited = resilience_stop_run(binary, work, run, log)
                    res_stop.append(t)
                    res_exited += exited
            print(f"stop run {run + 1:2}/{stop_runs}: keepalived {ka_stop[-1]:6.1f} ms   "
                  f"resilience {res_stop[-1]:6.1f} ms", flush=True)
        for run in range(0 if args.only_stop else args.runs):
            phase = random.random() * PHASE_MAX_MS
            # Same phase for both; the order alternates so both see the same load.
            for first in ((0, 1) if run % 2 == 0 else (1, 0)):
                if first == 0:
                    ka.append(keepalived_run(work, run, phase, log))
                else:
                    t, r, d = resilience_run(binary, work, run, phase, log)
                    res.append(t)
                    if d is not None:
                        detect.append(d)
                    rss = rss or r
            print(f"run {run + 1:2}/{args.runs}: phase {phase:5.1f} ms   keepalived {ka[-1][0]:6.1f} ms "
                  f"(overhead {ka[-1][1]:+5.1f})   resilience {res[-1][0]:6.1f} ms (overhead {res[-1][1]:+5.1f})",
                  flush=True)
    finally:
        cleanup()
        log.close()
    if ka_stop:
        print()
        print(f"graceful stop (SIGTERM, as systemctl stop) of the active node -> peer serving, "
              f"{stop_runs} runs each, same namespaces and window ({WINDOW_MS:.0f} ms)\n")
        print("| system | what the stopping side does | median ms | p95 ms | max ms |")
        print("|---|---|---|---|---|")
        for name, what, xs in (
                ("keepalived 2.2.7 (VRRPv3)", "priority-0 advert; backup waits its skew time", ka_stop),
                ("resilience node", "leaving heartbeat, stops its services, Inactive heartbeat", res_stop)):
            print(f"| {name} | {what} | {statistics.median(xs):.1f} | {pct(xs, 0.95):.1f} | {max(xs):.1f} |")
        print(f"\nratio resilience / keepalived: median {statistics.median(res_stop) / statistics.median(ka_stop):.3f}; "
              f"stopped resilience node exited by itself, status 0: {res_exited} of {stop_runs}")
    if not ka:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return
    print()
    print(f"SIGKILL of the active node -> standby services started, {args.runs} runs each, "
          f"same window {WINDOW_MS:.0f} ms (heartbeat/advert {INTERVAL_MS} ms), the kill {PHASE_MAX_MS / 2:.0f} ms "
          f"after a heartbeat on average (the same phase for both in each run)\n")
    print("| system | median ms | p95 ms | overhead beyond the window, median ms | overhead p95 ms | runs with a late heartbeat |")
    print("|---|---|---|---|---|---|")
    for name, xs in (("keepalived 2.2.7 (VRRPv3)", ka), ("resilience node", res)):
        kill_up = [x[0] for x in xs]
        over = [x[1] for x in xs]
        late = sum(1 for x in xs if x[2])
        print(f"| {name} | {statistics.median(kill_up):.1f} | {pct(kill_up, 0.95):.1f} | "
              f"{statistics.median(over):+.1f} | {pct(over, 0.95):+.1f} | {late} |")
    med = lambda xs, i: statistics.median([x[i] for x in xs])
    diffs = [r[0] - k[0] for r, k in zip(res, ka)]
    print(f"\nratio resilience / keepalived: median {med(res, 0) / med(ka, 0):.3f}, "
          f"p95 {pct([x[0] for x in res], 0.95) / pct([x[0] for x in ka], 0.95):.3f}; "
          f"paired difference resilience - keepalived, same phase: median {statistics.median(diffs):+.1f} ms, "
          f"{sum(1 for d in diffs if d <= 0)} of {len(diffs)} runs <= 0")
    print("(overhead = services started - (last heartbeat heard by the standby + window))")
    if detect:
        print(f"\nresilience, from its own events: silence detected -> services started, "
              f"median {statistics.median(detect):.1f} ms, p95 {pct(detect, 0.95):.1f} ms")
    if rss:
        print(f"idle memory of a resilience node: {rss / 1024:.1f} MB RSS")
    rows = false_failover_rows() if not args.keep else []
    if rows:
        print("\nsimulator, same window, connected but lossy link (false failovers per hour):")
        for r in rows:
            print(r)
    if args.keep:
        print(f"\nwork folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
