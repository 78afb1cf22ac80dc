"""A CPU-bound Python service for the bench: worker threads run pure-Python request
handlers (parse, compute, format) and count them under a shared lock, contending for the
GIL as such a service does.

Usage: pycpu.py WORKERS SECONDS. Prints "ready"; SIGUSR1 opens the measured window,
SIGUSR2 closes it and prints "python REQUESTS_PER_SECOND"; exits after SECONDS.
"""

import signal
import sys
import threading
import time

COUNT_LOCK = threading.Lock()
handled = 0
window = {}


def handle_request(number):
    fields = f"id={number}&user=u{number % 97}&items=" + ",".join(str(i) for i in range(16))
    parsed = dict(field.split("=") for field in fields.split("&"))
    total = sum(int(item) ** 2 for item in parsed["items"].split(","))
    return f'{{"id": {parsed["id"]}, "total": {total}}}'


def worker():
    global handled
    number = 0
    while True:
        handle_request(number)
        number += 1
        with COUNT_LOCK:
            handled += 1


def open_window(*_):
    window["start"] = (time.monotonic(), handled)


def close_window(*_):
    started, count = window["start"]
    rate = (handled - count) / (time.monotonic() - started)
    print(f"python {rate:.1f}", flush=True)


def main():
    workers, seconds = int(sys.argv[1]), float(sys.argv[2])
    signal.signal(signal.SIGUSR1, open_window)
    signal.signal(signal.SIGUSR2, close_window)
    for _ in range(workers):
        threading.Thread(target=worker, daemon=True).start()
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)


if __name__ == "__main__":
    main()
