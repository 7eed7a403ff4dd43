"""The primary's signals: handlers that only enqueue (the wakeup fd carries each signal number to the loop), and
what each signal asks the policy for (gunicorn's lesson: no work in a handler, one dispatch per signal).

==========  ==============================================================================================
signal      event
==========  ==============================================================================================
SIGCHLD     (reap: :mod:`corepool.children`)
SIGTERM     :class:`~corepool.events.StopSignal` (drain first, graceful stop, or once stopping a fast stop)
SIGINT      the same as SIGTERM
SIGQUIT     :class:`~corepool.events.StopRequested`, not graceful: a fast stop
SIGUSR2     :class:`~corepool.events.ReloadRequested`
SIGHUP      re-read the config file (:class:`~corepool.events.ConfigReloaded` or ``ConfigRefused``), reload
SIGTTIN     :class:`~corepool.events.ScaleRequested` (+1)
SIGTTOU     :class:`~corepool.events.ScaleRequested` (-1)
==========  ==============================================================================================
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

from corepool import events, settings

HANDLED = (
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


def event_for(signum: int, now: float, current: settings.Settings, flags: dict[str, Any]) -> events.Event | None:
    """What a signal asks the policy for (None: SIGCHLD, which the primary answers by reaping)."""
    match signal.Signals(signum):
        case signal.SIGTERM | signal.SIGINT:
            return events.StopSignal(now, signal.Signals(signum).name)
        case signal.SIGQUIT:
            return events.StopRequested(now, graceful=False, by="SIGQUIT")
        case signal.SIGUSR2:
            return events.ReloadRequested(now, "SIGUSR2")
        case signal.SIGHUP:
            return _reread(now, current, flags)
        case signal.SIGTTIN:
            return events.ScaleRequested(1, now)
        case signal.SIGTTOU:
            return events.ScaleRequested(-1, now)
    return None


def _reread(now: float, current: settings.Settings, flags: dict[str, Any]) -> events.Event:
    """SIGHUP: the config file again, with the command line's flags over it (without a file: just a reload)."""
    if current.config_path is None:
        return events.ReloadRequested(now, "SIGHUP")
    try:
        fresh = settings.load(current.config_path, flags)
    except settings.SettingsError as exc:
        return events.ConfigRefused(now, str(exc))
    return events.ConfigReloaded(now, current, fresh)


class WakeupPipe:
    """Signals as bytes on a socket the primary's selector watches (``signal.set_wakeup_fd``)."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()

    def install(self, selector: selectors.BaseSelector, on_signal: Callable[[int], None]) -> None:
        for end in (self.reader, self.writer):
            end.setblocking(False)
        signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, _noop_handler)
        selector.register(self.reader, selectors.EVENT_READ, lambda _mask: self._read(on_signal))

    def _read(self, on_signal: Callable[[int], None]) -> None:
        try:
            data = self.reader.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            on_signal(signum)

    def sockets(self) -> list[socket.socket]:
        """Both ends: a forked child closes them."""
        return [self.reader, self.writer]

    @staticmethod
    def uninstall() -> None:
        signal.set_wakeup_fd(-1)


@contextlib.contextmanager
def blocked() -> Iterator[set[int | signal.Signals]]:
    """The primary's signals held back (around a fork): a signal meant for the primary must not land in the child
    between fork and its own set-up. The inherited wakeup fd would hand it back to the primary as a second signal
    nobody sent (a SIGTERM would become a fast stop), and the inherited no-op handler would swallow a SIGTERM sent
    to the child. Yields the mask to restore (the child restores it itself once it has reset its handlers)."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # pending ones reach the primary's loop now


def reset_in_child(mask: set[int | signal.Signals], ignored: tuple[int, ...]) -> None:
    """In a freshly forked child: no wakeup fd, default handlers (``ignored``: those the child leaves to the
    primary), then the mask from before the fork."""
    signal.set_wakeup_fd(-1)  # before closing the wakeup socket, so no signal writes to a stale fd
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _noop_handler(_signum: int, _frame: object) -> None:
    """Signals are read from the wakeup fd by the loop; the handler only has to exist."""
