"""The Twisted counterpart of `oxicorn quote`: reply with the current quote, then keep what the
client sent as the new one (one value in the factory).

    python twisted_quote.py PORT
"""
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver


class Quoter(LineReceiver):
    def lineReceived(self, line):
        self.sendLine(self.factory.quote)
        self.factory.quote = line


class QuoteFactory(Factory):
    protocol = Quoter

    def __init__(self, quote):
        self.quote = quote


if __name__ == "__main__":
    factory = QuoteFactory(b"An apple a day keeps the doctor away")
    reactor.listenTCP(int(sys.argv[1]), factory, backlog=2048, interface="127.0.0.1")
    reactor.run()
