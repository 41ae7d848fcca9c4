"""The package's shape (issue 12 §3): no import cycles, lazy imports inside functions included, and nothing
below the CLI imports typer or rich."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mcnotify"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of the package that `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def test_no_import_cycles_lazy_imports_included() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        trail.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, trail)
        trail.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_below_the_cli_imports_typer_or_rich() -> None:
    offenders = []
    for name, path in modules().items():
        if name.startswith("mcnotify.cli") or name == "mcnotify.__main__":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            roots = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            offenders += [f"{name}: {r}" for r in roots if r.split(".")[0] in ("typer", "rich", "click")]
    assert not offenders, offenders


def test_the_one_retry_policy_logs_each_retry_and_yields_to_a_stop(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import threading
    import time

    from mcnotify import retrying, stop
    from mcnotify.errors import Stopped

    attempts: list[float] = []

    def failing() -> None:
        attempts.append(time.monotonic())
        raise ConnectionError("refused")

    caplog.set_level(logging.INFO)
    with pytest.raises(ConnectionError):
        retrying.call(failing, "thing", 3, ConnectionError, logger=logging.getLogger("t"), first_wait=0.01)
    assert len(attempts) == 3
    assert "thing: refused; attempt 1 of 3 failed, retrying in" in caplog.text
    attempts.clear()
    timer = threading.Timer(0.3, stop.request_stop)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(Stopped):
            retrying.call(failing, "thing", 5, ConnectionError, logger=logging.getLogger("t"), first_wait=60)
    finally:
        timer.cancel()
        stop.reset()
    assert len(attempts) == 1 and time.monotonic() - started < 5  # not the 60 s backoff
