"""Build dist/mcnotify: a shiv zipapp pinned to the Python that built it.

    python scripts/build_dist.py OUTPUT [--shebang '/usr/bin/env python3.11']
    python scripts/build_dist.py --stamp FILE OUTPUT --built-for 3.99   (a copy claiming another Python; tests)

shiv's own __main__.py unpacks first and imports later, so a wrong interpreter or an unwritable home ends in a
traceback. This replaces it with scripts/dist_main.py, which records the build's major.minor, refuses any other
Python with one line (exit 78) and picks a safe folder to unpack into, then hands over to shiv's bootstrap.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAIN = HERE / "dist_main.py"
CONSTRAINTS = HERE.parent / "constraints.txt"


def main_source(built_for: tuple[int, int]) -> bytes:
    text = MAIN.read_text()
    stamped, count = re.subn(r"^BUILT_FOR = \(\d+, \d+\)", f"BUILT_FOR = {built_for!r}", text, flags=re.MULTILINE)
    if count != 1:
        raise SystemExit(f"build_dist: no BUILT_FOR line in {MAIN}")
    return stamped.encode()


def stamp(source: Path, target: Path, built_for: tuple[int, int], shebang: str | None = None) -> None:
    """Copy the zipapp `source` to `target` with our __main__.py (and optionally another shebang line)."""
    data = source.read_bytes()
    first, _, _ = data.partition(b"\n")
    line = f"#!{shebang}".encode() if shebang else first
    if not line.startswith(b"#!"):
        raise SystemExit(f"build_dist: {source} does not start with a shebang line")
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(source) as old, tmp.open("wb") as out:
        out.write(line + b"\n")
        with zipfile.ZipFile(out, "w") as new:
            for info in old.infolist():  # same names, order, dates and compression: still reproducible
                body = main_source(built_for) if info.filename == "__main__.py" else old.read(info)
                new.writestr(info, body)
    tmp.chmod(0o755)
    tmp.replace(target)


def interpreter_version(shebang: str) -> tuple[int, int] | None:
    """The major.minor a shebang's interpreter runs, when it can be asked; None when it is not on this host."""
    argv = shebang.split()
    try:
        out = subprocess.run(
            [*argv, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.strip().split(".")
    return int(major), int(minor)


def parse_version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--shebang", help="interpreter line (default: /usr/bin/env pythonX.Y of this build)")
    parser.add_argument("--stamp", type=Path, help="restamp this built file instead of building")
    parser.add_argument("--built-for", type=parse_version, help="record this major.minor instead (tests)")
    args = parser.parse_args()
    built_for: tuple[int, int] = args.built_for or tuple(sys.version_info[:2])  # type: ignore[assignment]
    if args.stamp:
        stamp(args.stamp, args.output, built_for, args.shebang)
        return
    shebang = args.shebang or f"/usr/bin/env python{built_for[0]}.{built_for[1]}"
    found = interpreter_version(shebang)
    if found is not None and found != built_for:
        raise SystemExit(
            f"build_dist: {shebang} runs Python {found[0]}.{found[1]}, but this build is for "
            f"{built_for[0]}.{built_for[1]} (its compiled dependencies only load there)"
        )
    raw = args.output.with_name(args.output.name + ".shiv")
    # The file holds the versions the tests ran with: pip reads PIP_CONSTRAINT (shiv's own -c is another option).
    subprocess.run(
        [
            str(Path(sys.executable).parent / "shiv"),
            "--reproducible",
            "--compressed",
            "-q",
            "-e",
            "mcnotify.cli:main",
            "-p",
            shebang,
            "-o",
            str(raw),
            ".",
        ],
        check=True,
        env={**os.environ, "PIP_CONSTRAINT": str(CONSTRAINTS)},
    )
    stamp(raw, args.output, built_for)
    raw.unlink()
    print(f"{args.output}: for Python {built_for[0]}.{built_for[1]}, #!{shebang}")


if __name__ == "__main__":
    main()
