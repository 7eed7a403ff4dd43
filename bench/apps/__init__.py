"""The apps the bench serves. Each marks the first request a process serves (see :mod:`bench.apps.mark`)."""
