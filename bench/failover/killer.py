#!/usr/bin/env python3
"""Kill the active node at a chosen phase after one of its heartbeats.

Run inside the standby's network namespace (`ip netns exec NS python3
killer.py ...`). It watches the veth with a raw packet socket for a frame
from the active node (a VRRP advert, IP protocol 112, or a Resilience
heartbeat, UDP to port 7400), waits `phase_ms` after it, SIGKILLs the
active node's process group, then keeps watching for a while to catch a
heartbeat that was already on its way (then "last" is that one). Prints one
JSON line: {"last": t, "kill": t, "late": n}, times from time.time() (the clock of
`date +%s.%N`, which the services use to stamp their start).

Seeing the heartbeat where the standby sees it lets the bench give both
systems the same phase in a run, so their difference is their own overhead
and not the luck of where the kill fell.
"""

import json
import os
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003


def from_active(frame, src):
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return False
    ip = frame[14:]
    if ip[12:16] != src:
        return False
    proto = ip[9]
    if proto == 112:
        return True
    if proto == 17:
        ihl = (ip[0] & 0x0F) * 4
        return len(ip) >= ihl + 4 and int.from_bytes(ip[ihl + 2:ihl + 4], "big") == 7400
    return False


def main():
    dev, src, pgid, phase_ms = sys.argv[1], socket.inet_aton(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    s.bind((dev, 0))
    give_up = time.time() + 10
    last = None
    seen = []  # every frame from the active node, for the record
    # The first heartbeat seen arms the kill; a later one (the phase is below
    # the interval, so only with jitter) moves it.
    while True:
        now = time.time()
        if last is None and now > give_up:
            print(json.dumps({"error": "no heartbeat from the active node"}), flush=True)
            return 1
        target = None if last is None else last + phase_ms / 1000
        if target is not None and now >= target:
            break
        timeout = 0.5 if target is None else target - now
        r, _, _ = select.select([s], [], [], timeout)
        if r:
            frame = s.recv(2048)
            if from_active(frame, src):
                last = time.time()
                seen.append(last)
    kill = time.time()
    os.killpg(pgid, signal.SIGKILL)
    late = 0
    end = time.time() + 0.3
    while time.time() < end:
        r, _, _ = select.select([s], [], [], max(0, end - time.time()))
        if r and from_active(s.recv(2048), src):
            # Sent before the kill landed: the standby's wait starts here.
            late += 1
            last = time.time()
    print(json.dumps({"last": last, "kill": kill, "late": late, "seen": seen[-5:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
