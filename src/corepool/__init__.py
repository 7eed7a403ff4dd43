"""corepool: a systemd-native, socket-activated pre-fork worker pool for Python web services."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("corepool")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
