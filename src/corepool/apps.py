"""Finding and classifying the user's app (``module:attribute``). Only workers and ``check`` import apps."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from typing import Any


class AppLoadError(Exception):
    """The app cannot be imported or used. ``str()`` is one line; ``detail`` is the traceback, if any."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def load(spec: str, app_dir: str = ".") -> Any:
    """Import ``module:attribute`` (dots allowed in the attribute) with ``app_dir`` first on sys.path."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"app {spec!r}: expected module:attribute, for example myapp:app")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(
                f"app {spec!r}: no module named {exc.name!r} (is it on the path? --app-dir is {path})"
            ) from None
        raise _import_failed(spec, module_name, exc) from None
    except BaseException as exc:  # an app's import may raise anything, SystemExit included
        raise _import_failed(spec, module_name, exc) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"app {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise AppLoadError(f"app {spec!r}: {attr} is a {type(obj).__name__}, not a callable app")
    return obj


def _import_failed(spec: str, module_name: str, exc: BaseException) -> AppLoadError:
    detail = "".join(traceback.format_exception(exc))
    return AppLoadError(f"app {spec!r}: importing {module_name} raised {type(exc).__name__}: {exc}", detail)


def detect_interface(app: Any, requested: str) -> str:
    """``asgi``, ``wsgi`` or ``raw``. ``auto``: an async callable is ASGI, any other callable WSGI."""
    if requested != "auto":
        return requested
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__):
        return "asgi"
    if inspect.isclass(app) and hasattr(app, "__await__"):
        return "asgi"
    return "wsgi"
