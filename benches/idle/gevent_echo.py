"""A gevent echo server (gevent's `StreamServer` example: a greenlet per connection), the other
anchor echo is measured against in benches/idle.sh.

    python gevent_echo.py PORT
"""
import sys

from gevent.server import StreamServer


def echo(sock, _address):
    while True:
        data = sock.recv(16384)
        if not data:
            break
        sock.sendall(data)
    sock.close()


if __name__ == "__main__":
    server = StreamServer(("127.0.0.1", int(sys.argv[1])), echo, backlog=2048)
    server.serve_forever()
