"""Print the corepool package's Python Depends, from what the package really contains (run by debian/rules).

    python3 debian/depends.py PRIVATE_DIR

Reads the Requires-Dist of every distribution installed in PRIVATE_DIR (corepool's own wheel and the engines
bundled next to it), keeps those that apply here (markers evaluated, extras left out) and are not bundled, and
maps each to Debian's python3-NAME with its lower bound: "python3-uvloop (>= 0.17), python3-rich (>= 13), ...".
"""

from __future__ import annotations

import re
import sys
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def main(private: Path) -> str:
    metas = [Parser().parsestr(p.read_text()) for p in sorted(private.glob("*.dist-info/METADATA"))]
    bundled = {canonicalize_name(m["Name"]) for m in metas}
    depends: dict[str, str] = {}
    for meta in metas:
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(req.name)
            if name in bundled:
                continue
            lower = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
            package = "python3-" + re.sub(r"[^a-z0-9.+-]", "-", name)
            depends[package] = f"{package} (>= {lower[0]})" if lower else package
    return ", ".join(depends[p] for p in sorted(depends))


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
