"""corepool's benchmark suite: ``python -m bench all`` (see ``python -m bench --help``).

It runs corepool and its peers (gunicorn, uvicorn, granian, nginx as the ceiling) side by side on 127.0.0.1,
loads them with wrk, and writes ``docs/benchmarks/README.md`` plus PNG plots. Kept import-free: the bench apps
in :mod:`bench.apps` are imported by the servers under test.
"""
