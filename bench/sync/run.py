#!/usr/bin/env python3
"""bench/sync: folder replication, Resilience against `rsync -a` to an rsync
daemon, both over loopback, in the same run (no SSH in either).

Rows: a first sync of about 10,000 files / 1 GB into an empty folder, a
re-sync with nothing changed, and a re-sync after 1% of the files changed.
Resilience runs as two real nodes (the Main pushes with `resilience
replicate`, over TLS under a cluster CA); rsync as `rsync --daemon` and a
client. Each row is timed for both, from the command's start to its exit,
over several rounds (the order swapped each round); the table gives medians.

Needs rsync (installed with apt-get when missing).
Usage: python3 bench/sync/run.py [--files 10000] [--mb 1024] [--rounds 3]
"""

import argparse
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
started = []


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def need(binary, package):
    if shutil.which(binary):
        return
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=True)


def make_tree(src: Path, files: int, total_mb: int, seed=7):
    rng = random.Random(seed)
    avg = total_mb * (1 << 20) // files
    per_dir = 100
    for i in range(files):
        d = src / f"d{i // per_dir:03}" / f"s{(i // 10) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        size = max(1, int(rng.expovariate(1 / avg)))
        size = min(size, avg * 20)
        (d / f"f{i:05}.dat").write_bytes(os.urandom(size))


def change_one_percent(src: Path, seed=11):
    rng = random.Random(seed)
    all_files = sorted(p for p in src.rglob("*.dat"))
    picked = rng.sample(all_files, max(1, len(all_files) // 100))
    for p in picked:
        size = p.stat().st_size
        p.write_bytes(os.urandom(size))
    return len(picked)


def fmt(times):
    return "/".join(f"{t:.3f}" for t in times)


def cpu_seconds(pids):
    """CPU time (user + system, with reaped children) of running processes:
    the rsync daemon's forked workers, the nodes' threads."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])
    return total / tick


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(args, servers):
    """Wall time of `args`, and CPU time spent by it and by `servers`."""
    # Start each run with no dirty pages left by the previous one, so neither
    # pays for the other's writeback.
    os.sync()
    c0, s0 = children_cpu(), cpu_seconds(servers)
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    time.sleep(0.3)  # the rsync daemon reaps its worker (its CPU counts then)
    cpu = children_cpu() - c0 + cpu_seconds(servers) - s0
    if r.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return dt, cpu, r.stdout


def node_conf(work, name, peer, hb, peer_hb, api, repl, peer_repl, folder):
    return f"""
[node]
name = "{name}"
type = "{'main' if name == 'pbx-main' else 'standby'}"
state_dir = "{work}/state-{name}"
[peer]
name = "{peer}"
address = "127.0.0.1:{peer_hb}"
[heartbeat]
listen = "127.0.0.1:{hb}"
key_file = "{work}/cluster.key"
[failback]
policy = "manual"
[[service]]
name = "pbx"
start = "true"
stop = "true"
[api]
listen = "127.0.0.1:{api}"
token_file = "{work}/api.token"
[replication]
listen = "127.0.0.1:{repl}"
peer = "127.0.0.1:{peer_repl}"
ca = "{work}/pki/ca.pem"
cert = "{work}/pki/{name}.crt"
key = "{work}/pki/{name}.key"
[[replication.dir]]
name = "data"
path = "{folder}"
"""


def trees_equal(a: Path, b: Path):
    r = subprocess.run(["diff", "-r", "-q", str(a), str(b)], capture_output=True, text=True)
    return r.returncode == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--binary", help="measure this resilience binary (default: build the release one)")
    args = ap.parse_args()
    need("rsync", "rsync")
    if args.binary:
        binary = str(Path(args.binary).resolve())
    else:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "resilience"], cwd=ROOT, check=True)
        binary = str(ROOT / "target" / "release" / "resilience")
    work = Path(tempfile.mkdtemp(prefix="ressync-"))
    src, dst_rsync, dst_res = work / "src", work / "dst-rsync", work / "dst-res"
    for d in (src, dst_rsync, dst_res):
        d.mkdir()
    print(f"making {args.files} files, about {args.mb} MB ...", flush=True)
    make_tree(src, args.files, args.mb)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    try:
        # rsync daemon, no SSH.
        rport = free_port()
        (work / "rsyncd.conf").write_text(
            f"use chroot = no\nuid = root\ngid = root\npid file = {work}/rsyncd.pid\n"
            f"[dst]\n    path = {dst_rsync}\n    read only = no\n")
        p = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={work}/rsyncd.conf",
                              f"--port={rport}", "--address=127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(p)
        # Resilience: a Main and a Standby replicating job "data".
        # The node refuses secrets group or others may read, and tokens under 32 characters.
        for name, text in (("cluster.key", "cd" * 32), ("api.token", "bench-token-" + "0" * 32)):
            (work / name).write_text(text + "\n")
            (work / name).chmod(0o600)
        pki = str(work / "pki")
        subprocess.run([binary, "cert", "init", "--dir", pki], check=True, capture_output=True)
        for n in ("pbx-main", "pbx-standby"):
            subprocess.run([binary, "cert", "issue", n, "--dir", pki], check=True, capture_output=True)
        hb = [free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)]
        api = [free_port(), free_port()]
        repl = [free_port(), free_port()]
        names = ["pbx-main", "pbx-standby"]
        folders = [src, dst_res]
        for i in (0, 1):
            conf = work / f"{names[i]}.toml"
            conf.write_text(node_conf(work, names[i], names[1 - i], hb[i], hb[1 - i], api[i], repl[i],
                                      repl[1 - i], folders[i]))
            log = open(work / f"{names[i]}.log", "w")
            started.append(subprocess.Popen([binary, "node", "--config", str(conf)], stdout=log, stderr=log))
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api[0]}/api/v1/ha", timeout=1) as r:
                    if json.load(r).get("active"):
                        break
            except Exception:
                pass
            time.sleep(0.1)
        else:
            sys.exit("the main never became active")
        time.sleep(1)
        res_cmd = [binary, "replicate", "--config", str(work / "pbx-main.toml")]
        rsync_cmd = ["rsync", "-a", "--delete", f"{src}/", f"rsync://127.0.0.1:{rport}/dst/"]
        rows = []

        servers = {"rsync": [started[0].pid], "res": [started[1].pid, started[2].pid]}

        def once(who, cmd, timings, cpus):
            dt, cpu, out = timed(cmd, servers[who])
            timings.append(dt)
            cpus.append(cpu)
            return out

        def row(label, before_round=None):
            # Several rounds, the order of the two swapped each round so
            # neither always runs on the other's dirty pages; the median is
            # the figure.
            t_rsync, t_res, c_rsync, c_res, out = [], [], [], [], ""
            for r in range(args.rounds):
                if before_round:
                    before_round(r)
                if r % 2 == 0:
                    once("rsync", rsync_cmd, t_rsync, c_rsync)
                    out = once("res", res_cmd, t_res, c_res)
                else:
                    out = once("res", res_cmd, t_res, c_res)
                    once("rsync", rsync_cmd, t_rsync, c_rsync)
                assert trees_equal(src, dst_rsync), "rsync copy differs"
                assert trees_equal(src, dst_res), "resilience copy differs"
            med = statistics.median
            rows.append((label, med(t_rsync), med(t_res), med(c_rsync), med(c_res)))
            print(f"{label}: wall rsync {fmt(t_rsync)} s, resilience {fmt(t_res)} s; "
                  f"CPU rsync {fmt(c_rsync)} s, resilience {fmt(c_res)} s ({out.strip()})",
                  flush=True)

        def empty_copies(_round):
            for d in (dst_rsync, dst_res):
                shutil.rmtree(d)
                d.mkdir()

        changed = []

        def change(r):
            changed.append(change_one_percent(src, seed=11 + r))

        row(f"first sync, {args.files} files, {total / (1 << 20):.0f} MB", empty_copies)
        row("re-sync, nothing changed")
        row("re-sync, 1% of files changed", change)
        print(f"files changed per round: {changed}")
        print()
        print(f"medians of {args.rounds} rounds")
        print("| row | rsync -a (daemon) s | resilience s | ratio resilience / rsync "
              "| CPU rsync s | CPU resilience s | CPU ratio |")
        print("|---|---|---|---|---|---|---|")
        for label, a, b, ca, cb in rows:
            print(f"| {label} | {a:.3f} | {b:.3f} | {b / a:.2f} | {ca:.2f} | {cb:.2f} | {cb / ca:.2f} |")
    finally:
        for p in started:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
