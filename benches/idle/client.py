#!/usr/bin/env python3
"""Opens N connections to a server, takes each through one protocol step, then holds them idle.

    client.py MODE HOST PORT N READY_FILE

MODE is what each connection does before it goes idle:
  echo   sends one line, waits for it back
  quote  sends one line, waits for the reply line
  chat   sends a name, waits for MARKER (env CHAT_MARKER, default "you joined as"), then
         reads and discards whatever the room sends (join notices of later members); sends
         the name again when oxicorn says it cannot be checked right now (a loaded machine)
  http   sends one keep-alive GET for PATH (env HTTP_PATH, default "/"), reads the response
  h2     HTTP/2 with prior knowledge (h2c): the preface, SETTINGS (and an ACK of the
         server's), one GET for PATH on stream 1, read until that stream ends
  none   connects only

Source addresses rotate over 127.0.0.2, 127.0.0.3, … (20,000 connections each), so the client
side does not run out of ephemeral ports. Connections are numbered from FIRST (env, default 0):
several clients run side by side with disjoint numbers (chat names, source addresses) when
one process may not hold them all (RLIMIT_NOFILE). At most CONCURRENCY (env, default 256) connections
are in their step at once. When all N are idle (and, for chat, the room has been quiet for a
second), the client writes "opened=N seconds=S failed=F" to READY_FILE and holds every
connection until SIGTERM. A benchmark tool for benches/idle.sh, not a test.
"""
import errno
import os
import resource
import select
import signal
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24
PER_SOURCE = 20_000


def h2_frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_request(path):
    """The client preface, an empty SETTINGS, an ACK of the server's, and a GET on stream 1.

    The header block uses HPACK's static table (RFC 7541 appendix A): 0x82 :method GET,
    0x86 :scheme http, 0x44 :path as a literal, 0x41 :authority as a literal; no Huffman."""
    block = b"\x82\x86" + b"\x44" + bytes([len(path)]) + path.encode() + b"\x41\x05bench"
    return (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + h2_frame(0x4, 0, 0, b"")
        + h2_frame(0x4, 0x1, 0, b"")
        + h2_frame(0x1, 0x4 | 0x1, 1, block)
    )


def h2_stream_ended(buf, stream):
    """Whether buf holds a HEADERS or DATA frame with END_STREAM on `stream`."""
    at = 0
    while at + 9 <= len(buf):
        length = int.from_bytes(buf[at:at + 3], "big")
        kind, flags = buf[at + 3], buf[at + 4]
        sid = int.from_bytes(buf[at + 5:at + 9], "big") & 0x7FFFFFFF
        if sid == stream and kind in (0x0, 0x1) and flags & 0x1:
            return True
        at += 9 + length
    return False


# What oxicorn chat answers when a name cannot be checked right now (its bus did not answer
# in time): the client sends the name again.
RETRY = b"try again in a moment"


def main():
    mode, host, port, n, ready_file = sys.argv[1:6]
    port, n = int(port), int(n)
    first = int(os.environ.get("FIRST", "0"))
    conc = int(os.environ.get("CONCURRENCY", "256"))
    marker = os.environ.get("CHAT_MARKER", "you joined as").encode()
    path = os.environ.get("HTTP_PATH", "/")
    want = n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    ep = select.epoll()
    conns = {}  # fd -> [sock, index, received bytes (only while in the step)]
    held = []
    started = done = failed = 0
    t0 = time.monotonic()

    def request(i):
        if mode in ("echo", "quote"):
            return b"line %d\n" % i
        if mode == "chat":
            return b"u%d\r\n" % i
        if mode == "http":
            return ("GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path).encode()
        if mode == "h2":
            return h2_request(path)
        return b""

    def finished(buf, i):
        if mode == "echo":
            return buf == b"line %d\n" % i
        if mode == "quote":
            return buf.endswith(b"\n")
        if mode == "chat":
            return marker in buf
        if mode == "http":
            head, sep, body = buf.partition(b"\r\n\r\n")
            if not sep:
                return False
            length = 0
            for h in head.split(b"\r\n")[1:]:
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            return len(body) >= length
        if mode == "h2":
            return h2_stream_ended(buf, 1)
        return True

    def open_one(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind(("127.0.0.%d" % (2 + i // PER_SOURCE), 0))
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        conns[s.fileno()] = [s, i, None]
        ep.register(s.fileno(), select.EPOLLOUT)

    def idle(fd):
        nonlocal done
        s = conns[fd][0]
        done += 1
        held.append(s)
        if mode == "chat":
            conns[fd][2] = None  # keeps draining, without a buffer
        else:
            ep.unregister(fd)
            del conns[fd]

    last_data = time.monotonic()
    while done + failed < n or (mode == "chat" and time.monotonic() - last_data < 1.0):
        while started < n and started - done - failed < conc:
            open_one(first + started)
            started += 1
        for fd, ev in ep.poll(0.2):
            c = conns.get(fd)
            if c is None:
                continue
            s, i, buf = c
            if ev & select.EPOLLOUT:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    failed += 1
                    ep.unregister(fd)
                    del conns[fd]
                    s.close()
                    continue
                s.send(request(i))
                c[2] = b""
                if mode == "none":
                    idle(fd)
                else:
                    ep.modify(fd, select.EPOLLIN)
                continue
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del conns[fd]
                if buf is not None:
                    failed += 1
                continue
            last_data = time.monotonic()
            if buf is None:
                continue  # chat: a notice for an idle member
            # chat: only the marker is looked for, so only its length of what came before is
            # kept; cutting the new data instead could cut the marker off (the notices of
            # later members often follow it in the same read).
            buf = buf[-len(marker):] + data if mode == "chat" else buf + data
            c[2] = buf
            if finished(buf, i):
                idle(fd)
            elif mode == "chat" and RETRY in buf:
                # The server could not check the name in time (its bus busy on a loaded
                # machine): ask again, as a person would, rather than wait for ever.
                s.send(request(i))
                c[2] = b""
    seconds = time.monotonic() - t0
    with open(ready_file + ".tmp", "w") as f:
        f.write("opened=%d seconds=%.2f failed=%d\n" % (done, seconds, failed))
    os.rename(ready_file + ".tmp", ready_file)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        for fd, _ in ep.poll(0.5):
            c = conns.get(fd)
            if c is None:
                continue
            try:
                if not c[0].recv(65536):
                    ep.unregister(fd)
                    del conns[fd]
            except OSError:
                pass


if __name__ == "__main__":
    main()
