"""An asyncio pile-up: refreshers waiting on an asyncio.Lock a holder keeps, and fetchers
waiting to read answers a backend never sends, all in one event loop.

Usage: pyasync.py REFRESHERS FETCHERS SECONDS ORACLE. Once the tasks are pending, writes
to ORACLE (JSON) each pending task's coroutine stack as Python itself sees it (the
coroutine, then the one it awaits, innermost last: "function (file:line)"), prints
"ready PORT" and exits after SECONDS.
"""

import asyncio
import json
import os
import socket
import sys
import sysconfig
import threading

CACHE_LOCK = None
STDLIB = sysconfig.get_paths()["stdlib"]


async def refresh_cache():
    async with CACHE_LOCK:
        await asyncio.sleep(0)


async def fetch_quote(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /quote\r\n")
    return await reader.read(100)


async def hold_cache(held):
    async with CACHE_LOCK:
        held.set()
        await asyncio.sleep(3600)


def backend(listener):
    """Accepts and keeps the connections, never answering."""
    peers = []
    while True:
        peers.append(listener.accept()[0])


def short_name(path):
    """A module's file as py-spy and tracer name it: its path within the standard library."""
    if path.startswith(STDLIB + os.sep):
        return os.path.relpath(path, STDLIB)
    return os.path.basename(path)


def coroutine_stack(task):
    """The task's coroutines as Python sees them, outermost first."""
    stack, awaitable = [], task.get_coro()
    while awaitable is not None and hasattr(awaitable, "cr_frame"):
        frame = awaitable.cr_frame
        if frame is None:
            break
        code = frame.f_code
        stack.append(f"{code.co_qualname} ({short_name(code.co_filename)}:{frame.f_lineno})")
        awaitable = awaitable.cr_await
    return stack


async def main():
    global CACHE_LOCK
    refreshers, fetchers, seconds, oracle = sys.argv[1:5]
    CACHE_LOCK = asyncio.Lock()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=backend, args=(listener,), daemon=True).start()
    port = listener.getsockname()[1]
    held = asyncio.Event()
    holder = asyncio.create_task(hold_cache(held))
    await held.wait()
    tasks = [asyncio.create_task(refresh_cache()) for _ in range(int(refreshers))]
    tasks += [asyncio.create_task(fetch_quote(port)) for _ in range(int(fetchers))]
    await asyncio.sleep(0.5)
    # Every task but this one, which is running now and will be sleeping below.
    others = asyncio.all_tasks() - {asyncio.current_task()}
    stacks = {task.get_name(): coroutine_stack(task) for task in others}
    with open(oracle, "w") as out:
        json.dump(stacks, out)
    print(f"ready {port}", flush=True)
    await asyncio.sleep(float(seconds))
    holder.cancel()


if __name__ == "__main__":
    asyncio.run(main())
