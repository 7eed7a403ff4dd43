"""Check a built rpm's Requires: corepool's own dependencies are all there, and Fedora can satisfy every one.

    python3 packaging/rpm_requires.py check RPM PYPROJECT [--python 3.13]
        -> exits 1 naming what is wrong: a dependency of PYPROJECT (markers evaluated for that Python) that the
           rpm does not require as python3dist(NAME) or python3.Xdist(NAME) >= its lower bound, or an `rpm -qp
           --requires` entry that is not a capability listed in FEDORA below at a version that satisfies it.

rpm's Python dependency generator writes those Requires from the dist-info the package installs into
%{python3_sitelib} (on Fedora, and in Debian's rpm that packaging/build runs); the check makes sure it did, and
that the result installs on Fedora.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# What Fedora 42 (current stable; Python 3.13) provides, per package, from its documentation:
# * python(abi) = 3.13 and /usr/bin/python3: package python3 (Fedora Python packaging guidelines, "Automatically
#   generated dependencies": every python3.X package provides python(abi) = 3.X; Fedora 42 ships Python 3.13,
#   https://fedoraproject.org/wiki/Changes/Python3.13 (Python 3.13 since Fedora 41)).
# * python3dist(NAME) = VERSION: generated for every Python package from its dist-info (same guidelines,
#   https://docs.fedoraproject.org/en-US/packaging-guidelines/Python/#_automatically_generated_dependencies);
#   versions as listed by https://packages.fedoraproject.org/ for Fedora 42 (python3-uvicorn 0.34, python3-httptools
#   0.6.4, python3-uvloop 0.21, python3-websockets 14.2, python3-prometheus_client 0.21, python3-rich 13.9,
#   python3-sdnotify 0.3.2, python3-systemd 235 (python3dist(systemd-python)), python3-click 8.1, python3-h11 0.14,
#   python3-h2 4.1, python3-hyperframe 6.0).
# * systemd: package systemd (257 in Fedora 42); /bin/sh (the scriptlets' shell): package bash; the rpmlib(...)
#   capabilities of rpm itself.
FEDORA: dict[str, str] = {
    "/bin/sh": "",
    "python(abi)": "3.13",
    "/usr/bin/python3": "",
    "python3": "3.13",
    "python3dist(uvicorn)": "0.34",
    "python3dist(httptools)": "0.6.4",
    "python3dist(uvloop)": "0.21",
    "python3dist(websockets)": "14.2",
    "python3dist(prometheus-client)": "0.21",
    "python3dist(rich)": "13.9",
    "python3dist(sdnotify)": "0.3.2",
    "python3dist(systemd-python)": "235",
    "python3dist(click)": "8.1",
    "python3dist(h11)": "0.14",
    "python3dist(h2)": "4.1",
    "python3dist(hyperframe)": "6.0",
    "systemd": "257",
}


def wanted(pyproject: Path, python: str) -> dict[str, str]:
    """{normalized name: lower bound or ""} of the project's dependencies on that Python."""
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    out: dict[str, str] = {}
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        lower = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
        out[canonicalize_name(req.name)] = lower[0] if lower else ""
    return out


def check(rpm: Path, pyproject: Path, python: str) -> int:
    listed = subprocess.run(["rpm", "-qp", "--requires", str(rpm)], capture_output=True, text=True, check=True)
    own = subprocess.run(["rpm", "-qp", "--provides", str(rpm)], capture_output=True, text=True, check=True)
    bad = []
    required: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        m = re.fullmatch(r"(\S+)(?:\s+(<=|>=|=|<|>)\s+(\S+))?", line.strip())
        if not m:
            bad.append(f"{line!r}: not understood")
            continue
        cap, op, ver = m.groups()
        if cap.startswith("rpmlib(") or line.strip() in own.stdout.splitlines():
            continue  # rpm's own features; what the package provides itself (config(corepool))
        # the generator writes python3.13dist(NAME); Fedora's python3-NAME provides it as well as python3dist(NAME)
        cap = re.sub(rf"^python{re.escape(python)}dist\(", "python3dist(", cap)
        if (name := re.fullmatch(r"python3dist\((.+)\)", cap)) is not None and op == ">=":
            required[canonicalize_name(name.group(1))] = ver
        if cap not in FEDORA:
            bad.append(f"{line}: no Fedora package provides {cap}")
            continue
        have = FEDORA[cap]
        if op and not {">=": Version(have) >= Version(ver), "=": Version(have) == Version(ver),
                       ">": Version(have) > Version(ver), "<": Version(have) < Version(ver),
                       "<=": Version(have) <= Version(ver)}[op]:
            bad.append(f"{line}: Fedora 42 has {cap} = {have}")
    for name, lower in wanted(pyproject, python).items():
        if name not in required or (lower and Version(required[name]) < Version(lower)):
            bad.append(f"{pyproject} needs {name} >= {lower}, the rpm requires {required.get(name, 'nothing')}")
    if bad:
        print("; ".join(bad))
        return 1
    print(f"every Requires of {rpm.name} is provided on Fedora 42 ({len(listed.stdout.splitlines())} entries)")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    python = "3.13"
    if "--python" in args:
        i = args.index("--python")
        python = args[i + 1]
        del args[i : i + 2]
    if len(args) != 3 or args[0] != "check":
        sys.exit(__doc__)
    sys.exit(check(Path(args[1]), Path(args[2]), python))
