"""The classic Twisted echo server (Twisted's "Writing Servers" howto), the anchor echo is
measured against in benches/idle.sh.

    python twisted_echo.py PORT
"""
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(Factory):
    protocol = Echo


if __name__ == "__main__":
    reactor.listenTCP(int(sys.argv[1]), EchoFactory(), backlog=2048, interface="127.0.0.1")
    reactor.run()
