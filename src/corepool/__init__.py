"""corepool: a systemd-native, socket-activated pre-fork worker pool for Python web services.

Inside a worker, apps talk to the other workers with :func:`broadcast` and :func:`on_message`.
"""

from importlib.metadata import PackageNotFoundError, version

from corepool.bus import broadcast, on_message

try:
    __version__ = version("corepool")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "broadcast", "on_message"]
