"""Fair share of connections across workers sharing one listening socket.

Every worker that shares a listening socket is woken for each new connection, and the one that wins the
``accept()`` race can take a whole burst; with keep-alive clients that skew lasts as long as the connections.
corepool evens it out with a board in shared memory (an anonymous ``MAP_SHARED`` mapping the primary creates
before any fork): each accepting worker keeps ``open connections + 1`` in its cell (0: not accepting), and a
worker holding clearly more than the mean pauses accepting for a moment, leaving the next connections to the
others. A canary also keeps to its share of accepted connections (:class:`AcceptQuota`). Reading and writing
the board are memory accesses: no syscall is added to the request path.
"""

from __future__ import annotations

import mmap

CELLS = 256
# A worker may exceed the mean by this factor, plus one connection, before it pauses (the goal is ±15 %).
SLACK = 1.10
PAUSE = 0.002  # seconds to leave the socket to the others


def cell_of(slot: int, generation: int) -> int:
    """A worker's cell: during a roll a slot's old and new worker (consecutive generations) use two cells."""
    return (slot * 2 + generation % 2) % CELLS


class Board:
    """Open-connection counts of every accepting worker, and how many connections each has accepted."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 2 * CELLS * 8, flags=mmap.MAP_SHARED)
        view = memoryview(self._map).cast("q")
        self._cells, self._accepted = view[:CELLS], view[CELLS:]

    def accepted(self, cell: int) -> None:
        """A worker accepted a connection (a memory write: the request path pays no syscall)."""
        self._accepted[cell] += 1

    def accept_counts(self, cell: int) -> tuple[int, int, int]:
        """(accepted by ``cell``, accepted by all, workers accepting now)."""
        values = self._cells.tolist()
        return self._accepted[cell], sum(self._accepted.tolist()), CELLS - values.count(0)

    def set(self, cell: int, open_connections: int | None) -> None:
        """``None``: the worker does not accept (draining or gone)."""
        self._cells[cell] = 0 if open_connections is None else open_connections + 1

    def over_share(self, mine: int) -> bool:
        """True when a worker with ``mine`` open connections holds clearly more than the accepting workers' mean."""
        values = self._cells.tolist()
        count = CELLS - values.count(0)
        if count <= 1:
            return False
        mean = (sum(values) - count) / count
        return mine > mean * SLACK + 1


class AcceptQuota:
    """A worker's accepts capped at its share since :meth:`start`: a canary must see no more than its share of
    the requests (an idle worker, and a broken one answering fast is idle, wins most ``accept()`` races)."""

    def __init__(self, board: Board, cell: int) -> None:
        self.board, self.cell = board, cell
        mine, total, _ = board.accept_counts(cell)
        self.base_mine, self.base_total = mine, total

    def over(self) -> bool:
        mine, total, accepting = self.board.accept_counts(self.cell)
        return accepting > 1 and (mine - self.base_mine) > (total - self.base_total) / accepting + 1
