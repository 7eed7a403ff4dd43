"""How processes end: the pool's exit codes, and a child's end as data.

The primary (``corepool serve``) and the command line exit with :data:`EXIT_OK`, :data:`EXIT_FAILURE` or
:data:`EXIT_USAGE`; what each means is README's "Exit codes" table.

A worker's own codes (3: the app failed to boot, 4: its primary was gone) are the engines' and workers'
interface, :mod:`corepool.workerapi`. :class:`Ended` is how a child ended as the primary learned it: from its
wait status (an exit code, or the signal that killed it), or the reason it never ran or was lost before anyone
knew its pid. The signal is a field, never read back out of a description.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from corepool.workerapi import EXIT_BOOT_FAILED, EXIT_PRIMARY_GONE

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

WORKER_EXIT_MEANINGS = {EXIT_BOOT_FAILED: "app failed to boot", EXIT_PRIMARY_GONE: "primary gone"}


@dataclass(frozen=True)
class Ended:
    """A child's end: ``code`` (it exited), ``signal`` (a signal killed it, by name) or ``lost`` (why there is no
    status: the fork failed, its loader could not fork it, it was gone before its pid was known)."""

    code: int | None = None
    signal: str | None = None
    lost: str | None = None

    @classmethod
    def of(cls, wait_status: int) -> Ended:
        """From a ``waitpid`` status."""
        if os.WIFSIGNALED(wait_status):
            number = os.WTERMSIG(wait_status)
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = str(number)
            return cls(signal=name)
        return cls(code=os.WEXITSTATUS(wait_status))

    @property
    def description(self) -> str:
        """'exit code 3 (app failed to boot)', 'killed by SIGKILL', or why it was lost: for log lines."""
        if self.signal is not None:
            return f"killed by {self.signal}"
        if self.code is not None:
            meaning = WORKER_EXIT_MEANINGS.get(self.code)
            return f"exit code {self.code}" + (f" ({meaning})" if meaning else "")
        return self.lost or "gone"

    @property
    def as_told(self) -> bool:
        """How a process corepool asked to stop (SIGTERM) ends when it does as told: exit 0, or the SIGTERM."""
        return self.code == 0 or self.signal == "SIGTERM"


def exited(code: int) -> Ended:
    return Ended(code=code)


def killed(signal_name: str) -> Ended:
    return Ended(signal=signal_name)


def lost(why: str) -> Ended:
    return Ended(lost=why)
