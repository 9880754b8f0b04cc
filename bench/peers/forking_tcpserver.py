"""The standard library's socketserver.ForkingTCPServer, configured for a benchmark.

Backlog 128 (the stock request_queue_size is 5) and no practical child cap (the stock
max_children is 40: the 41st client waits until a child exits), SO_REUSEADDR on.

Usage: python forking_tcpserver.py [PORT]   (0 picks a free port; prints "listening on ...")
"""

import socketserver
import sys


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class Server(socketserver.ForkingTCPServer):
    allow_reuse_address = True
    request_queue_size = 128
    max_children = 1_000_000


port = int(sys.argv[1]) if len(sys.argv) > 1 else 7007
with Server(("127.0.0.1", port), EchoHandler) as server:
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
