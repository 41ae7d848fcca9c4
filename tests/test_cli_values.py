"""Option values the CLI coerces itself (without typer's pydantic adapters, for start-up time) come out exactly
as typer's own coercion gives them: the same values, or the same error for the operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param

from mcnotify import cli
from mcnotify.cli.application import PlainValues, use_plain_values

TEXTS: list[Any] = ["", " ", "-", "a b", "ü", "x\udcff", "\ud800", "\x00", "~/x", "../up", Path("given"), 7, None]
SAMPLES: dict[type, list[Any]] = {
    Path: TEXTS,
    str: TEXTS,
    int: [0, -3, 7, "7", " 7", "x", "", 7.0, True, None],
    float: [0.0, 2.5, 2, "2.5", "nan", "x", None],
    bool: [True, False, "yes", "0", "", None],
}
CHOICES: list[Any] = ["email", "EMAIL", "ok", "fax", "", 3, None]


def _outcome(coerce: Any, value: Any, param: Any) -> tuple[str, Any]:
    try:
        got = coerce(value, param=param, ctx=None)
    except BadParameter as exc:
        return "refused", exc.format_message()
    return type(got).__name__, repr(got)  # repr: nan is not equal to itself


def _all_params(command: Any) -> list[tuple[str, Any]]:
    found = [(command.name or "mcnotify", p) for p in command.params]
    for sub in getattr(command, "commands", {}).values():
        found += _all_params(sub)
    return found


def test_plain_option_values_come_out_as_typers_own_coercion_gives_them(tmp_path: Path) -> None:
    existing_file, existing_dir = tmp_path / "config.toml", tmp_path / "dir"
    existing_file.write_text("")
    existing_dir.mkdir()
    command = typer.main.get_command(cli.app)
    params = _all_params(command)
    for _, param in params:
        use_plain_values([param])
    covered = {f"{where} {p.name}": p for where, p in params if isinstance(p._runtime_param, PlainValues)}
    # The ones a run parses on every start, the other plain ones, and the choices (whose absence alone is ours).
    assert {"mcnotify config", "mcnotify quiet", "run-all follow", "status limit", "history step"} <= set(covered)
    assert {"retry channel", "history result"} <= set(covered)
    for name, param in covered.items():
        typers_own = build_runtime_param(param.type_descriptor)
        kind = param.type_descriptor.annotation
        samples = SAMPLES.get(kind, CHOICES)
        for value in [*samples, *([str(existing_file), existing_dir] if kind is Path else [])]:
            ours = _outcome(param._runtime_param.coerce, value, param)
            assert ours == _outcome(typers_own.coerce, value, param), (name, value)
