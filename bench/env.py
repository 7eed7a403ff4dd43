"""The bench's own environment: a private venv with the peers, nginx, versions and the machine."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("COREPOOL_BENCH_STATE", "/var/lib/corepool-bench"))
VENV = STATE / "peers-venv"
PYTHON = VENV / "bin" / "python"
# Pinned so that runs compare like with like; bump deliberately.
REQUIREMENTS = [
    "gunicorn==27.0.1",
    "uvicorn[standard]==0.54.0",
    "uvicorn-worker==0.4.0",
    "granian==2.8.9",
    "hypercorn==0.18.0",
    "fastapi==0.165.0",
    "flask==3.1.3",
    "matplotlib==3.11.2",
]
MEASURED = ["corepool", "gunicorn", "uvicorn", "uvicorn-worker", "granian", "uvloop", "httptools", "a2wsgi",
            "fastapi", "pydantic"]  # fmt: skip


def _stamp() -> str:
    # corepool's own dependencies too: a new one (h2, say) reinstalls the checkout into the venv
    deps = (REPO / "pyproject.toml").read_text()
    return hashlib.sha256("\n".join([*REQUIREMENTS, str(REPO), deps]).encode()).hexdigest()[:16]


def ensure_peers(log: bool = True) -> Path:
    """Create or update the peers venv (from /usr/bin/python3) when the pinned list changed; return its python."""
    stamp = VENV / ".bench-stamp"
    if stamp.exists() and stamp.read_text() == _stamp() and PYTHON.exists() and _corepool_is_the_checkout():
        return PYTHON
    if log:
        print(f"bench: installing the peers into {VENV}", flush=True)
    STATE.mkdir(parents=True, exist_ok=True)
    if not PYTHON.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True)
    pip = [str(PYTHON), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-U", "pip"], check=True)
    subprocess.run([*pip, *REQUIREMENTS, "-e", str(REPO)], check=True)
    stamp.write_text(_stamp())
    return PYTHON


def _corepool_is_the_checkout() -> bool:
    """The venv must run corepool from this checkout (editable), never a stale copy installed by hand."""
    out = subprocess.run([str(PYTHON), "-c", "import corepool; print(corepool.__file__)"],
                         capture_output=True, text=True)  # fmt: skip
    return out.returncode == 0 and Path(out.stdout.strip()).resolve().is_relative_to((REPO / "src").resolve())


def in_peers_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def reexec_in_peers(argv: list[str]) -> None:
    """Run the bench itself with the peers venv's python (it has matplotlib and every server)."""
    python = ensure_peers()
    os.execv(str(python), [str(python), "-m", "bench", *argv])


def ensure_nginx() -> str | None:
    """Path of nginx, installing nginx-light from apt if absent; None when that is not possible."""
    found = shutil.which("nginx") or (Path("/usr/sbin/nginx").exists() and "/usr/sbin/nginx") or None
    if found:
        return str(found)
    if os.geteuid() != 0:
        return None
    print("bench: installing nginx-light (apt) for the static ceiling", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light"], env=env, capture_output=True)
    if result.returncode != 0:
        return None
    return shutil.which("nginx") or "/usr/sbin/nginx"


def bin_path(name: str) -> str:
    return str(VENV / "bin" / name)


@functools.cache
def corepool_modes() -> dict[str, list[str]]:
    """corepool modes this checkout offers, as extra ``serve`` arguments: always lazy; preload when the CLI has
    a ``--mode`` or ``--preload`` flag."""
    help_text = subprocess.run([bin_path("corepool"), "serve", "--help"], capture_output=True, text=True).stdout
    if re.search(r"--mode\b", help_text):
        return {"lazy": ["--mode", "lazy"], "preload": ["--mode", "preload"]}
    if re.search(r"--preload\b", help_text):
        lazy = ["--no-preload"] if "--no-preload" in help_text else []
        return {"lazy": lazy, "preload": ["--preload"]}
    return {"lazy": []}


def versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        f"ps={MEASURED!r}\n"
        "out={}\n"
        "for p in ps:\n"
        "    try: out[p]=m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    import json

    out = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True, check=True).stdout
    found: dict[str, str] = json.loads(out)
    nginx = ensure_nginx()
    if nginx:
        err = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
        found["nginx"] = err.strip().split("/")[-1]
    wrk_v = subprocess.run(["/usr/bin/wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0]
    found["wrk"] = wrk_v.replace("wrk", "").strip()
    return found


def checkout() -> str:
    """The commit of the checkout corepool was measured from, ``+dirty`` when src/ had uncommitted changes."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True)  # fmt: skip
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> str:
    """One line on the machine: CPU model, cores, memory, kernel, Python."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    os_name = "Linux"
    with_release = Path("/etc/os-release")
    if with_release.exists():
        pretty = re.search(r'PRETTY_NAME="([^"]+)"', with_release.read_text())
        os_name = pretty.group(1) if pretty else os_name
    return (f"{model}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB RAM, {os_name}, kernel {platform.release()}, "
            f"Python {platform.python_version()}")  # fmt: skip


