"""Raw sockets for protocols that are not HTTP: the app is ``handler(listen_socket)``.

An ``async def`` handler runs on the worker's event loop (one task per listener) and is cancelled on stop;
health pings then prove that loop turns. A plain function runs on a thread per listener and owns its accept
loop; pings then only prove the process is alive, and on stop the worker exits once the handlers return or
``graceful_timeout`` ends.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import socket
import threading
from typing import Any

from corepool import log
from corepool.engines.eventloop import loop_factory
from corepool.workerapi import EXIT_OK, WorkerLink, WorkerSpec

stopping = threading.Event()


async def _main(handler: Any, listeners: list[socket.socket], link: WorkerLink, spec: WorkerSpec) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def stop() -> None:
        stopping.set()
        done.set()

    loop.add_signal_handler(signal.SIGTERM, stop)
    link.on_primary_gone = stop
    link.attach(loop)
    if inspect.iscoroutinefunction(handler):
        tasks = [loop.create_task(handler(sock)) for sock in listeners]
        for sock in listeners:
            sock.setblocking(False)
        link.send("ready")
        await done.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        link.send("draining")
        return
    threads = [threading.Thread(target=handler, args=(sock,), daemon=True) for sock in listeners]
    for thread in threads:
        thread.start()
    link.send("ready")
    await done.wait()
    log.event("drain", "stopping: waiting for raw handlers to return")
    link.send("draining")  # a plain handler owns its accept loop: corepool cannot stop it accepting
    deadline = loop.time() + spec.drain_timeout
    while any(t.is_alive() for t in threads) and loop.time() < deadline:
        await asyncio.sleep(0.05)


def serve(handler: Any, listeners: list[socket.socket], link: WorkerLink, spec: WorkerSpec) -> int:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_main(handler, listeners, link, spec))
    return EXIT_OK
