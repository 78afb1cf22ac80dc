"""A CPython pile-up, as a Python service piles up: handler threads blocked putting
stats on a full queue.Queue, whose one reporter is blocked in sendall() to a backend
that stopped reading; a poster blocked in an http.client POST waiting for an answer
that never comes; auditors blocked on a threading.Lock a holder keeps.

Usage: pypileup.py HANDLERS SECONDS. Prints "ready PID" once every thread is started,
and exits after SECONDS.
"""

import http.client
import queue
import socket
import sys
import threading
import time

STATS_QUEUE = queue.Queue(maxsize=4)
AUDIT_LOCK = threading.Lock()


def report_stat(stat):
    STATS_QUEUE.put(stat)


def handler():
    while True:
        report_stat(b"x")


def post_stats(connection, payload):
    connection.sendall(payload)


def reporter(port):
    connection = socket.create_connection(("127.0.0.1", port))
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while True:
        stat = STATS_QUEUE.get()
        post_stats(connection, stat * 65536)


def send_metrics(port):
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=None)
    client.request("POST", "/metrics", body=b"requests_total 1\n")
    return client.getresponse()


def audit():
    with AUDIT_LOCK:
        pass


def hold_audit_lock(held):
    with AUDIT_LOCK:
        held.set()
        time.sleep(3600)


def backend(listener, read_request):
    """Accepts; reads a request if asked to, then neither reads nor answers."""
    while True:
        peer, _ = listener.accept()
        if read_request:
            peer.recv(65536)


def listen(read_request):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    threading.Thread(target=backend, args=(listener, read_request), daemon=True).start()
    return listener.getsockname()[1]


def main():
    handlers, seconds = int(sys.argv[1]), float(sys.argv[2])
    stats_port = listen(read_request=False)
    metrics_port = listen(read_request=True)
    held = threading.Event()
    threading.Thread(target=hold_audit_lock, args=(held,), daemon=True).start()
    held.wait()
    threading.Thread(target=reporter, args=(stats_port,), daemon=True).start()
    threading.Thread(target=send_metrics, args=(metrics_port,), daemon=True).start()
    for _ in range(2):
        threading.Thread(target=audit, daemon=True).start()
    for _ in range(handlers):
        threading.Thread(target=handler, daemon=True).start()
    print(f"ready {stats_port} {metrics_port}", flush=True)
    time.sleep(seconds)


if __name__ == "__main__":
    main()
