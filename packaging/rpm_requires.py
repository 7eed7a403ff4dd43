"""The rpm's Python Requires, and a check that Fedora can satisfy every Requires of a built rpm.

    python3 packaging/rpm_requires.py requires PYPROJECT BUNDLED_WHEEL... [--python 3.13]
        -> "python3dist(uvicorn) >= 0.30;python3dist(httptools) >= 0.6;..." (packaging/build passes it to rpmbuild)
    python3 packaging/rpm_requires.py check RPM
        -> every `rpm -qp --requires` entry must be a capability listed in FEDORA below, at a version that
           satisfies it; exits 1 naming the first one that is not.

The Requires are what Fedora's dependency generator would write for corepool's metadata (python3dist(NAME) >=
lower bound, markers evaluated for the target Python), less what the rpm bundles (whose own requirements are
added instead).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
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
#   python3-sdnotify 0.3.2, python3-systemd 235 (python3dist(systemd-python)), python3-click 8.1, python3-h11 0.14).
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
    "systemd": "257",
}


def requires(pyproject: Path, bundled_wheels: list[Path], python: str) -> str:
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    lines = list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    bundled = set()
    for wheel in bundled_wheels:
        with zipfile.ZipFile(wheel) as z:
            meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            meta = Parser().parsestr(z.read(meta_name).decode())
        bundled.add(canonicalize_name(meta["Name"]))
        lines += meta.get_all("Requires-Dist") or []
    out: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in bundled:
            continue
        lower = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
        out[name] = f"python3dist({name}) >= {lower[0]}" if lower else f"python3dist({name})"
    return ";".join(out[n] for n in sorted(out))


def check(rpm: Path) -> int:
    listed = subprocess.run(["rpm", "-qp", "--requires", str(rpm)], capture_output=True, text=True, check=True)
    own = subprocess.run(["rpm", "-qp", "--provides", str(rpm)], capture_output=True, text=True, check=True)
    bad = []
    for line in listed.stdout.splitlines():
        m = re.fullmatch(r"(\S+)(?:\s+(<=|>=|=|<|>)\s+(\S+))?", line.strip())
        if not m:
            bad.append(f"{line!r}: not understood")
            continue
        cap, op, ver = m.groups()
        if cap.startswith("rpmlib(") or line.strip() in own.stdout.splitlines():
            continue  # rpm's own features; what the package provides itself (config(corepool))
        if cap not in FEDORA:
            bad.append(f"{line}: no Fedora package provides {cap}")
            continue
        have = FEDORA[cap]
        if op and not {">=": Version(have) >= Version(ver), "=": Version(have) == Version(ver),
                       ">": Version(have) > Version(ver), "<": Version(have) < Version(ver),
                       "<=": Version(have) <= Version(ver)}[op]:
            bad.append(f"{line}: Fedora 42 has {cap} = {have}")
    if bad:
        print("; ".join(bad))
        return 1
    print(f"every Requires of {rpm.name} is provided on Fedora 42 ({len(listed.stdout.splitlines())} entries)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["requires"]:
        args = sys.argv[2:]
        python = "3.13"
        if "--python" in args:
            i = args.index("--python")
            python = args[i + 1]
            del args[i : i + 2]
        print(requires(Path(args[0]), [Path(a) for a in args[1:]], python))
    elif sys.argv[1:2] == ["check"]:
        sys.exit(check(Path(sys.argv[2])))
    else:
        sys.exit(__doc__)
