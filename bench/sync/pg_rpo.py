#!/usr/bin/env python3
"""bench/sync/pg_rpo.py: the recovery point of a PostgreSQL job, "commit on
the Main -> visible on the Standby", side by side in the same run with
PostgreSQL's own streaming replication (what Patroni runs on: under a
second), on loopback.

Rows:
- resilience, the shipped defaults (`watch_poll = "1s"`, `debounce = "2s"`);
- resilience, tight settings (`watch_poll = "200ms"`, `debounce = "300ms"`);
- PostgreSQL streaming replication (a hot standby made by pg_basebackup -R);
- the hourly push alone (`watch = false`, XiVO's rhythm): not waited for,
  computed: a commit lands at a uniform point of the hour, so the median
  wait is 30 min and the worst 60 min.

Each commit is one INSERT by `psql` on the Main; its row is then looked for
on the Standby every 20 ms; the time from the commit's return to the first
sight is one sample. Commits are spaced (`--gap`) so each push is its own.
Medians and the maximum over `--commits` commits per row.

Runs as root (the servers run as `postgres`). Needs the PostgreSQL server
package (apt-get install postgresql).
Usage: python3 bench/sync/pg_rpo.py [--commits 7] [--gap 4] [--binary PATH]
"""

import argparse
import glob
import json
import os
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


def pg_bin():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not dirs:
        sys.exit("PostgreSQL server not installed (apt-get install postgresql)")
    return Path(dirs[-1])


def as_postgres(args, **kw):
    return subprocess.run([str(a) for a in args], user="postgres", group="postgres", **kw)


def start_pg(work, name, port, data=None):
    data = data or work / f"pg-{name}"
    if not data.exists():
        data.mkdir(parents=True)
        shutil.chown(data, "postgres", "postgres")
        as_postgres([pg_bin() / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                     "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    log = open(work / f"pg-{name}.log", "w")
    p = subprocess.Popen([str(pg_bin() / "postgres"), "-D", str(data), "-p", str(port), "-c",
                          "unix_socket_directories=", "-c", "listen_addresses=127.0.0.1",
                          "-c", "fsync=off"],
                         stdout=log, stderr=log, user="postgres", group="postgres")
    started.append(p)
    deadline = time.time() + 30
    while time.time() < deadline:
        if sql(port, "postgres", "SELECT 1", check=False) == "1":
            return p
        time.sleep(0.1)
    sys.exit(f"postgres {name} did not start")


def sql(port, db, text, check=True):
    r = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "-d", db, "-c", text], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(r.stderr)
    return r.stdout.strip()


def node_conf(work, name, peer, hb, peer_hb, api, repl, peer_repl, pg_port, poll, debounce):
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
debounce = "{debounce}"
[[replication.postgres]]
name = "asterisk"
database = "asterisk"
port = {pg_port}
exclude_tables = ["cel"]
watch_poll = "{poll}"
"""


def measure(main_port, standby_port, commits, gap, start_id):
    """Commit a row on the Main, time until the Standby shows it."""
    samples = []
    for k in range(commits):
        rid = start_id + k
        sql(main_port, "asterisk", f"INSERT INTO users VALUES ({rid}, 'user-{rid}')")
        t0 = time.perf_counter()
        deadline = t0 + 120
        while time.perf_counter() < deadline:
            got = sql(standby_port, "asterisk", f"SELECT name FROM users WHERE id = {rid}",
                      check=False)
            if got == f"user-{rid}":
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"row {rid} never arrived")
        samples.append(time.perf_counter() - t0)
        time.sleep(gap)
    return samples


def run_nodes(binary, work, tag, main_pg, standby_pg, poll, debounce):
    hb = [free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)]
    api = [free_port(), free_port()]
    repl = [free_port(), free_port()]
    names = ["pbx-main", "pbx-standby"]
    pgs = [main_pg, standby_pg]
    procs = []
    for i in (0, 1):
        conf = work / f"{tag}-{names[i]}.toml"
        conf.write_text(node_conf(work / tag, names[i], names[1 - i], hb[i], hb[1 - i], api[i],
                                  repl[i], repl[1 - i], pgs[i], poll, debounce)
                        .replace(f"{work / tag}/cluster.key", f"{work}/cluster.key")
                        .replace(f"{work / tag}/api.token", f"{work}/api.token")
                        .replace(f"{work / tag}/pki", f"{work}/pki"))
        log = open(work / f"{tag}-{names[i]}.log", "w")
        p = subprocess.Popen([binary, "node", "--config", str(conf)], stdout=log, stderr=log)
        started.append(p)
        procs.append(p)
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
    return procs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=7)
    ap.add_argument("--gap", type=float, default=4.0)
    ap.add_argument("--binary", default=None)
    args = ap.parse_args()
    binary = args.binary
    if not binary:
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "resilience"], cwd=ROOT,
                       check=True)
        binary = str(target / "release" / "resilience")
    work = Path(tempfile.mkdtemp(prefix="respg-"))
    os.chmod(work, 0o755)
    try:
        for name, text in (("cluster.key", "cd" * 32), ("api.token", "bench-token-" + "0" * 32)):
            (work / name).write_text(text + "\n")
            (work / name).chmod(0o600)
        pki = str(work / "pki")
        subprocess.run([binary, "cert", "init", "--dir", pki], check=True, capture_output=True)
        for n in ("pbx-main", "pbx-standby"):
            subprocess.run([binary, "cert", "issue", n, "--dir", pki], check=True,
                           capture_output=True)
        ports = {"main": free_port(), "standby": free_port(), "replica": free_port()}
        start_pg(work, "main", ports["main"])
        start_pg(work, "standby", ports["standby"])
        schema = ("CREATE TABLE users(id int PRIMARY KEY, name text NOT NULL);"
                  "CREATE TABLE cel(id serial PRIMARY KEY, event text NOT NULL);")
        for who in ("main", "standby"):
            sql(ports[who], "postgres", "CREATE DATABASE asterisk")
            sql(ports[who], "asterisk", schema)
        # Some rows, so a push is a real dump and restore (about a small
        # PBX's configuration: 2,000 users).
        sql(ports["main"], "asterisk",
            "INSERT INTO users SELECT g, 'seed-' || g FROM generate_series(100000, 101999) g")
        # The anchor: a streaming replica of the Main's server.
        replica = work / "pg-replica"
        replica.mkdir()
        shutil.chown(replica, "postgres", "postgres")
        os.chmod(replica, 0o700)
        as_postgres([pg_bin() / "pg_basebackup", "-h", "127.0.0.1", "-p", ports["main"], "-U",
                     "postgres", "-D", replica, "-R", "-X", "stream"], check=True,
                    capture_output=True)
        start_pg(work, "replica", ports["replica"], data=replica)

        rows = []
        next_id = 1
        for tag, poll, debounce in (("defaults", "1s", "2s"), ("tight", "200ms", "300ms")):
            (work / tag).mkdir()
            procs = run_nodes(binary, work, tag, ports["main"], ports["standby"], poll, debounce)
            # Let the first push (the node's first reading) settle.
            time.sleep(5)
            s = measure(ports["main"], ports["standby"], args.commits, args.gap, next_id)
            next_id += args.commits
            rows.append((f"resilience, watch_poll {poll}, debounce {debounce}", s))
            print(f"{tag}: {' '.join(f'{x:.2f}' for x in s)}", flush=True)
            for p in procs:
                p.kill()
                p.wait()
        s = measure(ports["main"], ports["replica"], args.commits, 0.5, next_id)
        rows.append(("PostgreSQL streaming replication (Patroni's mechanism)", s))
        print(f"streaming: {' '.join(f'{x:.3f}' for x in s)}", flush=True)

        print()
        print(f"commit on the main -> row visible on the standby, {args.commits} commits per row")
        print("| row | median s | max s |")
        print("|---|---|---|")
        for label, s in rows:
            print(f"| {label} | {statistics.median(s):.3f} | {max(s):.3f} |")
        print("| resilience, hourly push only (watch = false; computed) | 1800 | 3600 |")
    finally:
        for p in reversed(started):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
