"""Lifecycle hooks, as gunicorn users know them: ``module:callable`` settings run at fixed points.

=============  =========  =====================================  ===================================================
hook           process    called as                              when it raises
=============  =========  =====================================  ===================================================
``post_fork``  worker     ``post_fork(slot, generation)``        the worker fails to boot (exit 3, backoff as for
                                                                 an import error)
``worker_exit`` worker    ``worker_exit(slot, generation)``      logged with its traceback; the worker exits anyway
``when_ready`` primary    ``when_ready(status)`` (a dict, as     logged with its traceback; the pool keeps serving
                          ``corepool status --json``)
``on_reload``  primary    ``on_reload(generation)``              logged with its traceback; the reload goes on
=============  =========  =====================================  ===================================================

A hook that cannot be imported stops the pool from starting (exit 1), like an app that cannot be imported.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from corepool import apps, log


def load(name: str, spec: str | None, app_dir: str) -> Callable[..., Any] | None:
    """Import hook ``name`` (raises :class:`corepool.apps.AppLoadError`, naming the hook, when it cannot)."""
    if not spec:
        return None
    try:
        hook: Callable[..., Any] = apps.load(spec, app_dir)
    except apps.AppLoadError as exc:
        raise apps.AppLoadError(f"{name} hook: {exc}", exc.detail) from None
    return hook


def run(name: str, hook: Callable[..., Any] | None, *args: Any) -> apps.AppLoadError | None:
    """Call a hook; its failure is logged with the traceback and returned (None when it ran fine)."""
    if hook is None:
        return None
    try:
        hook(*args)
    except BaseException as exc:  # a hook may raise anything, SystemExit included
        detail = "".join(traceback.format_exception(exc))
        message = f"{name} hook raised {type(exc).__name__}: {exc}"
        log.event("hook", f"{message}\n{detail.rstrip()}", warning=True, hook=name)
        return apps.AppLoadError(message, detail)
    return None
