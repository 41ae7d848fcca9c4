"""The single file's own start-up (scripts/dist_main.py, written into dist/mcnotify by scripts/build_dist.py):
the wrong Python is refused with one line, and it finds a safe folder to unpack into without a writable home.

A stand-in archive replaces shiv's bootstrap so these run in milliseconds; `make dist-check` runs the same
checks on the real build."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build_dist_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dist", ROOT / "scripts" / "build_dist.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A zipapp shaped like shiv's: a bootstrap that reports the unpack folder it was given."""
    raw = tmp_path / "raw"
    with raw.open("wb") as fd:
        fd.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(fd, "w") as zf:
            zf.writestr(
                "_bootstrap/__init__.py", "import os\ndef bootstrap():\n    print('root', os.environ['SHIV_ROOT'])\n"
            )
            zf.writestr("__main__.py", "import _bootstrap\n_bootstrap.bootstrap()\n")
    return raw


def stamped(archive: Path, built_for: tuple[int, int]) -> Path:
    target = archive.with_name(f"mcnotify-{built_for[0]}.{built_for[1]}")
    build_dist_module().stamp(archive, target, built_for, f"/usr/bin/env python{built_for[0]}.{built_for[1]}")
    return target


def run(exe: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SHIV_ROOT", "XDG_CACHE_HOME", "CACHE_DIRECTORY")}
    for key, value in env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return subprocess.run([sys.executable, str(exe)], capture_output=True, text=True, env=environ, timeout=30)


def test_the_file_records_its_python_and_pins_the_shebang(archive: Path) -> None:
    exe = stamped(archive, (3, 11))
    assert exe.read_bytes().startswith(b"#!/usr/bin/env python3.11\n")
    with zipfile.ZipFile(exe) as zf:
        assert "BUILT_FOR = (3, 11)" in zf.read("__main__.py").decode()
        assert zf.namelist() == ["_bootstrap/__init__.py", "__main__.py"]


def test_another_python_is_refused_with_one_line(archive: Path, tmp_path: Path) -> None:
    result = run(stamped(archive, (3, 99)), SHIV_ROOT=str(tmp_path / "shiv"))
    assert result.returncode == 78 and result.stdout == ""
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert result.stderr.splitlines() == [
        f"mcnotify: error: this file was built for Python 3.99 and cannot run on Python {running} "
        f"({sys.executable}): run it with python3.99, or build it again with `make dist` on this Python"
    ]
    assert not (tmp_path / "shiv").exists()  # refused before anything was unpacked


def test_without_a_writable_home_it_unpacks_into_a_private_folder(archive: Path, tmp_path: Path) -> None:
    exe = stamped(archive, sys.version_info[:2])  # type: ignore[arg-type]
    assert run(exe, SHIV_ROOT=str(tmp_path / "given")).stdout == f"root {tmp_path / 'given'}\n"
    # $HOME unusable (as a system user's is): the XDG cache when there is one...
    result = run(exe, HOME="/dev/null", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert result.stdout == f"root {tmp_path / 'xdg' / 'mcnotify'}\n", result.stderr
    # ...then systemd's CacheDirectory=...
    result = run(exe, HOME="/dev/null", CACHE_DIRECTORY=str(tmp_path / "cache"))
    assert result.stdout == f"root {tmp_path / 'cache'}\n", result.stderr
    # ...then a 0700 folder of this user's in the temporary folder.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = run(exe, HOME="/dev/null", TMPDIR=str(tmp))
    private = tmp / f"mcnotify-shiv-{os.geteuid()}"
    assert result.stdout == f"root {private}\n", result.stderr
    assert private.stat().st_mode & 0o777 == 0o700


def test_an_untrustworthy_folder_is_never_used(archive: Path, tmp_path: Path) -> None:
    exe = stamped(archive, sys.version_info[:2])  # type: ignore[arg-type]
    tmp = tmp_path / "tmp"
    shared = tmp / f"mcnotify-shiv-{os.geteuid()}"
    shared.mkdir(parents=True)
    shared.chmod(0o777)  # anyone could replace the code unpacked there
    result = run(exe, HOME="/dev/null", TMPDIR=str(tmp))
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"mcnotify: error: nowhere to unpack the single file (tried /dev/null/.shiv, {shared} (not a 0700 folder "
        "of this user)): set SHIV_ROOT to a folder this user can write to"
    ]
    result = run(exe, SHIV_ROOT="/dev/null/shiv")
    assert result.returncode == 78 and result.stderr.splitlines() == [
        "mcnotify: error: SHIV_ROOT=/dev/null/shiv is not a folder this user can write to (the single file unpacks "
        "itself there once)"
    ]
