#!/usr/bin/env python3
"""Idle chat members: what one joined, idle member costs the server (issue 13).

Starts `OXICORN chat -w 2` on a free loopback port, lets 20 members warm it up, then joins N
members that stay idle, drains what they were sent (so socket buffers are not measured) and
prints the growth of the proportional set size (PSS) of the server's whole process tree
(arbiter, workers, hub) per member. A benchmark, not a test: .ci/run does not run it.

    python3 benches/chat/idle.py target/release/oxicorn 2000

N is bounded by the open-files limit of this shell (each member is two descriptors here).
"""
import os, socket, subprocess, sys, time
oxi, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
srv = subprocess.Popen([oxi, "chat", "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                        "--worker-connections", str(n)], start_new_session=True)
def tree(pid):
    out = [pid]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                st = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                if int(st[1]) == pid: out.append(int(p))
            except OSError: pass
    return out
def pss():
    total = 0
    for p in tree(srv.pid):
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"): total += int(line.split()[1])
        except OSError: pass
    return total * 1024
for _ in range(100):
    try: socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError: time.sleep(0.05)
time.sleep(1)
# Warm up: a few members join and chat, so lazily allocated state exists before "before".
warm = []
for i in range(20):
    c = socket.create_connection(("127.0.0.1", port)); c.sendall(f"warm{i}\r\nhello\r\n".encode()); warm.append(c)
time.sleep(1)
before = pss()
conns = []
for i in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(f"m{i}\r\n".encode())
    conns.append(c)
time.sleep(3)
# Drain what they were sent (welcome, joins), so socket buffers are not what is measured.
for c in conns:
    c.setblocking(False)
    try:
        while c.recv(65536): pass
    except BlockingIOError: pass
time.sleep(2)
after = pss()
print(f"{oxi}: {n} idle members: {(after - before) / n:.0f} bytes each (PSS {before/1e6:.1f} -> {after/1e6:.1f} MB)")
os.killpg(srv.pid, 15); srv.wait()
