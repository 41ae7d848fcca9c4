"""Print constraints.txt: the exact versions this venv holds of mcnotify's dependencies (with the dev extra),
and of theirs, all the way down. pyproject.toml keeps ranges; this file is what the test venv and the single
file are built from, so a build today and one next month hold the same code.

    .venv/bin/python scripts/freeze_constraints.py > constraints.txt      (make constraints)
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = (
    "# Exact versions of mcnotify's dependencies (dev extra included), from a venv where `make test` passed.\n"
    "# pyproject.toml holds the ranges; `make constraints` rewrites this file after an upgrade.\n"
)


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """Every distribution `root[extras]` needs in this environment, by canonical name, with its version."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, set[str]]] = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            # A requirement applies without an extra, or with one that was asked for.
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted | {""}):
                continue
            key = canonicalize_name(req.name)
            for extra in {""} | req.extras:
                if (key, extra) not in seen:
                    seen.add((key, extra))
                    todo.append((req.name, set(req.extras)))
            pinned[key] = metadata.version(req.name)
    pinned.pop(canonicalize_name(root), None)
    return pinned


# The installers themselves (shiv requires them) are left to the venv: a pin here would also reach the isolated
# build environment, where pyproject's build-system asks for a newer setuptools.
INSTALLERS = ("pip", "setuptools", "wheel")


def main() -> None:
    pins = closure("mcnotify", {"dev"})
    for name in INSTALLERS:
        pins.pop(name, None)
    sys.stdout.write(HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))


if __name__ == "__main__":
    main()
