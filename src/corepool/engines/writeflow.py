"""Back-pressure from the transport, for a protocol whose writers wait (HTTP/1.1's exchanges, HTTP/2's streams):
asyncio calls :meth:`pause_writing` when the transport's buffer is over its high-water mark, and writers await
:meth:`WriteFlow.drain` until :meth:`resume_writing`."""

from __future__ import annotations

import asyncio


class WriteFlow(asyncio.Protocol):
    """The part of a protocol that lets writers wait for room (a subclass sets ``loop``)."""

    loop: asyncio.AbstractEventLoop
    write_paused = False
    _drained: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._release_writers()

    async def drain(self) -> None:
        """Until the transport takes writes again."""
        if self._drained is None:
            self._drained = self.loop.create_future()
        await self._drained

    def _release_writers(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
