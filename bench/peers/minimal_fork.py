"""The minimal fork-per-connection echo server, as a learner would write it from the tutorial.

Usage: python minimal_fork.py [PORT]   (0 picks a free port; prints "listening on HOST:PORT")
"""

import os
import signal
import socket
import sys

port = int(sys.argv[1]) if len(sys.argv) > 1 else 7007
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children for us
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(128)
print(f"listening on 127.0.0.1:{srv.getsockname()[1]}", flush=True)
while True:
    conn, addr = srv.accept()
    if os.fork() == 0:
        try:
            srv.close()
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        finally:
            os._exit(0)
    conn.close()
