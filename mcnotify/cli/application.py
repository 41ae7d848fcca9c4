"""The CLI's application: the typer app and its global options, and the `Application` object one invocation
carries in typer's context (hatch's pattern) with its consoles, its secrets and how a command runs and fails."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
import typer.core
from rich.console import Console

from mcnotify import __version__
from mcnotify.config import DEFAULT_CONFIG_PATH, Settings, hide_userinfo, load
from mcnotify.errors import EXIT_FAILURE, EXIT_TEMPORARY, McnotifyError
from mcnotify.redact import scrub

if TYPE_CHECKING:  # the steps pull in requests, paramiko, phonenumbers: import them only when used
    from mcnotify.logs import RedactingFilter
    from mcnotify.steps import Context

T = TypeVar("T")


# typer carries its own copy of click: its objects are handled by what they have (params, opts, commands).
def _options(params: list[Any]) -> dict[str, Any]:
    return {name: p for p in params if p.param_type_name == "option" for name in (*p.opts, *p.secondary_opts)}


def _takes_value(param: Any, token: str) -> bool:
    """Whether the next argument is this option's value (not for a flag, nor for `--opt=value`)."""
    return not (getattr(param, "is_flag", False) or getattr(param, "count", False) or "=" in token)


def _bundle_step(letters: str, known: dict[str, Any], own: dict[str, Any]) -> int:
    """For short options bundled as click reads them (`-qv`, `-qc FILE`, `-cFILE`, `-qcFILE`): how many arguments
    to move if they are all the app's (1, or 2 when the last takes the next argument as its value), else 0."""
    for at, letter in enumerate(letters):
        option = f"-{letter}"
        if option not in known or option in own:
            return 0
        if _takes_value(known[option], option):
            return 1 if at + 1 < len(letters) else 2  # the rest of the bundle is its value, or the next argument
    return 1


def _global_step(token: str, known: dict[str, Any], own: dict[str, Any]) -> int:
    """How many arguments the app's own option at `token` spans (2 when its value is the next argument, as a bundle's
    last letter may take it), or 0 when it is not the app's, or is also the command's own (`own`)."""
    name = token.split("=", 1)[0]
    if name in known and name not in own:
        return 2 if _takes_value(known[name], token) else 1
    if len(token) > 2 and token[0] == "-" and token[1] != "-":
        return _bundle_step(token[1:], known, own)  # -qv, -qc FILE, -cFILE
    return 0


def hoist_global_options(group: Any, args: list[str]) -> list[str]:
    """`mcnotify send-email -v` as `mcnotify -v send-email`: the app's own options (the callback's: --config,
    -q, -v, --log-json, --show-contacts) found after the command name are moved in front of it. The command's
    options and their values stay where they are (`skip --reason -q` keeps `-q` as the reason), `--help` stays
    the command's, and nothing after `--` moves. Anything not understood is left for click to report."""
    known = _options(group.params)
    start = 0
    while start < len(args) and args[start].startswith("-") and args[start] != "--":
        step = _global_step(args[start], known, {})
        if not step:
            return args
        start += step
    command, end = group, start
    while isinstance(getattr(command, "commands", None), dict) and end < len(args):
        sub = command.commands.get(args[end])
        if sub is None:
            break
        command, end = sub, end + 1
    if command is group:
        return args
    own = _options(command.params)
    moved: list[str] = []
    kept: list[str] = []
    i = end
    while i < len(args):
        token = args[i]
        name = token.split("=", 1)[0] if token.startswith("--") else token
        if token == "--":
            kept += args[i:]
            break
        step = _global_step(token, known, own)
        if step:
            if i + step > len(args):  # moved in front of the command, it would take the command's name as its value
                from typer._click.exceptions import BadOptionUsage

                option = name if name.startswith("--") else f"-{token[-1]}"  # of a bundle, its last letter
                raise BadOptionUsage(option, f"Option '{option}' requires an argument.")
            moved += args[i : i + step]
        else:
            step = 2 if name in own and _takes_value(own[name], token) else 1
            kept += args[i : i + step]
        i += step
    return args[:start] + moved + args[start:end] + kept


class PlainValues:
    """typer's coercion of one option's value, without pydantic for the values that need none.

    typer 0.29 builds a pydantic TypeAdapter for every option it coerces, and importing pydantic for that is
    about a fifth of an idle `run-all`. These come back as typer would return them: no value (None, for any
    option), a value that already has the option's plain type and range (a default: a bool, an int, a Path), and
    a string for a `str` or an unconstrained `Path` option. Everything else (numbers typed on the command line,
    choices, a NUL byte, a path that exists but cannot be read) goes to typer's own coercion, so its checks and
    its error messages are unchanged."""

    def __init__(self, descriptor: Any) -> None:
        self.descriptor = descriptor
        self.checked_by_typer_only = not _only_a_range(descriptor.parameter_info)
        self.typers_own: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:  # typer's too: a missing single value is None (required ones are caught afterwards)
            return None
        plain = self._plain(value)
        if plain is not None:
            return plain
        if self.typers_own is None:
            from typer._coercion import build_runtime_param

            self.typers_own = build_runtime_param(self.descriptor)
        return self.typers_own.coerce(value, param=param, ctx=ctx)

    def _plain(self, value: Any) -> Any:
        kind = self.descriptor.annotation
        if self.checked_by_typer_only:
            return None
        if kind is Path:
            if not isinstance(value, (str, Path)) or "\x00" in str(value) or not _encodable(str(value)):
                return None
            # typer stats the path only to refuse one that exists and cannot be read: leave that one to it
            if os.path.exists(value) and not os.access(value, os.R_OK):
                return None
            return value if isinstance(value, Path) else Path(value)
        if kind is str and isinstance(value, str):
            return str(value)
        if kind in (bool, int, float) and type(value) is kind and self._within(value):
            return value
        return None

    def _within(self, number: Any) -> bool:
        info = self.descriptor.parameter_info
        return (info.min is None or number >= info.min) and (info.max is None or number <= info.max)


def _encodable(path: str) -> bool:
    """Whether the OS can take this path: argv's undecodable bytes come back (surrogateescape), a lone surrogate
    made in Python does not, and typer refuses it."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        return False
    return True


def _only_a_range(info: Any) -> bool:
    """Whether a range is the only check typer makes of the option's value (none of its path checks, no parser,
    no clamping): PlainValues checks a range itself."""
    return (
        info.parser is None
        and not info.clamp
        and not info.exists
        and info.file_okay
        and info.dir_okay
        and not info.writable
        and not info.resolve_path
        and not info.allow_dash
        and info.path_type is None
    )


def use_plain_values(params: list[Any]) -> None:
    """Give each single-valued parameter `PlainValues` (which hands a choice's or a constrained option's value to
    typer, but not its absence: a `--result` left out is None without pydantic), where typer's parameter has the
    slot it caches its coercion in (`_runtime_param`, typer 0.29): with another typer, nothing changes."""
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if (
            descriptor is not None
            and getattr(param, "_runtime_param", False) is None
            and param.nargs == 1
            and not param.multiple
        ):
            param._runtime_param = PlainValues(descriptor)


_COMMAND_LINE = "mcnotify.command_line"  # in click's context meta, which every nested context shares


class McnotifyGroup(typer.core.TyperGroup):
    """Every group of the app (the app, `config`, `state`): plain option values are coerced without pydantic (see
    PlainValues; a command's parameters, click's `--help` included, are known only once it is resolved, hence the
    two hooks), and a usage error is one line (see usage_error)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        use_plain_values(self.get_params(ctx))
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            use_plain_values(command.get_params(ctx))
        return name, command, rest

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        command_line = list(args)  # parsing consumes the list
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except typer.TyperException as exc:
            usage_error(exc, parent, command_line)
        ctx.meta.setdefault(_COMMAND_LINE, command_line)  # the outermost group's: the whole command line
        return ctx

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:
            usage_error(exc, ctx, ctx.meta.get(_COMMAND_LINE, []))


def usage_error(exc: typer.TyperException, ctx: Any, command_line: list[str]) -> NoReturn:
    """A usage error (an unknown command or option, a value typer refuses) as one line naming the `--help` to read,
    with its exit code (2), as every other error is, instead of typer's box of usage, hint and message. `ctx` is
    the group's context where the error surfaced (None for the app's own options), `command_line` the arguments."""
    from typer._click.exceptions import NoArgsIsHelpError

    if isinstance(exc, NoArgsIsHelpError):  # a bare group: typer has printed its help, which is all there is to say
        raise typer.Exit(exc.exit_code)
    where = getattr(getattr(exc, "ctx", None), "command_path", None)
    if where is None and ctx is not None:  # e.g. "requires an argument": the command being parsed, if known
        where = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
    cli: Application | None = ctx.find_object(Application) if ctx is not None else None
    if cli is None:  # before the app's callback ran: --log-json, if it was given, still holds
        given = command_line[: command_line.index("--")] if "--" in command_line else command_line
        cli = Application(log_json="--log-json" in given)
    text = f"{_without_userinfo(exc.format_message())} ('{where or 'mcnotify'} --help' shows the usage)"
    cli.fail(text, exc.exit_code)


def _without_userinfo(text: str) -> str:
    """click echoes an argument it cannot place, escaped: a URL's user:password@ in it is masked generously, from
    each `://` to the last `@` before the next `://` or the end (a password may hold spaces, `@` or escapes)."""
    head, *urls = text.split("://")
    return "://".join([head, *map(hide_userinfo, urls)])


class GlobalOptionsAnywhere(McnotifyGroup):
    """The app's group: global options are accepted after the command too (see hoist_global_options)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(self, args))


app = typer.Typer(
    cls=GlobalOptionsAnywhere,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Deliver app notifications through Salesforce Marketing Cloud, exactly once.",
)
config_app = typer.Typer(cls=McnotifyGroup, no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")
state_app = typer.Typer(cls=McnotifyGroup, no_args_is_help=True, help="Move the state between backends.")
app.add_typer(state_app, name="state")

# Batch numbers and counts are 1 to LARGEST (typer's min= and max=): past a 64-bit integer a number cannot be looked
# up (SQLite's INTEGER, MySQL's BIGINT) and failed as "unexpected OverflowError"; a count under 1 reads as "no limit"
# (LIMIT -1 in SQLite; the store reads None as "every batch, oldest first"), never what was asked for.
LARGEST = 2**63 - 1

DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would happen; write and send nothing.")]
NoWait = Annotated[bool, typer.Option("--no-wait", help="Check the import once; exit 75 while it is pending.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def stdout_console() -> Console:
    # Not a terminal (CI, journald, pipes): a wide fixed width so tables are not squeezed into 80 columns, unless
    # COLUMNS says otherwise (rich reads it when the width is left open).
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 160
    return Console(highlight=False, soft_wrap=True, width=width)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


Meter = Callable[[str, int, int], None]


@dataclass
class Application:
    """One invocation's global options and what follows from them: the consoles, the log redactor, the secrets
    it learns once the config is read, and whether progress bars are wanted. The app's callback creates it and
    keeps it in typer's context (`ctx.obj`); a command gets it with `application(ctx)`."""

    config_path: Path = DEFAULT_CONFIG_PATH
    quiet: bool = False  # -q: besides warnings and errors, only what a command did; nothing to do prints nothing
    verbose: bool = False
    log_json: bool = False
    bars: bool = False
    out: Console = field(default_factory=stdout_console)
    err: Console = field(default_factory=stderr_console)
    redactor: RedactingFilter | None = None
    secrets: tuple[str, ...] = ()

    def fail(self, message: str, code: int) -> NoReturn:
        """The last line: an error, or a notice for "try again later" (exit 75: a held lock, a pending import),
        with its syslog priority when journald reads stderr (`journalctl -p err` finds every failure)."""
        from mcnotify import logs

        notice = code == EXIT_TEMPORARY
        text = scrub(message, self.secrets)
        if self.log_json:  # the last line too is one a log collector can parse
            level = "notice" if notice else "error"
            print(logs.json_line(level, text, error=text, exit_code=code), file=sys.stderr, flush=True)
            raise typer.Exit(code)
        text = f"mcnotify: {'' if notice else 'error: '}{text}"
        if logs.log_format(False, sys.stderr) == "journal":
            text = f"<{5 if notice else 3}>{text}"
        self.err.print(text, markup=False, highlight=False)
        raise typer.Exit(code)

    def guard(self, fn: Callable[[], T]) -> T:
        """Every failure becomes one line and an exit code; a traceback only with MCNOTIFY_DEBUG=1."""
        try:
            return fn()
        except McnotifyError as exc:
            self.fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            self.fail("interrupted", 130)
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("MCNOTIFY_DEBUG"):
                raise
            self.fail(f"unexpected {type(exc).__name__}: {exc} (MCNOTIFY_DEBUG=1 shows a traceback)", EXIT_FAILURE)

    def settings(self, path: Path | None = None) -> Settings:
        """The config (--config unless `path` names another), its secrets handed to the redactor at once."""
        settings = self.guard(lambda: load(path or self.config_path))
        self.use_secrets(settings)
        return settings

    def use_secrets(self, settings: Settings) -> None:
        from mcnotify import logs

        self.secrets = settings.secrets
        logs.set_secrets(self.redactor, settings.secrets)

    def run_with_meter(self, fn: Callable[[Meter | None], T]) -> T:
        """Call fn with a terminal progress meter when bars are wanted (else None), and always remove the bars."""
        meter = TerminalMeter(self.err) if self.bars else None
        try:
            return self.guard(lambda: fn(meter))
        finally:
            if meter is not None:
                meter.close()

    def run(self, command: str, action: Callable[[Context], T], dry_run: bool, role: str | None = None) -> T:
        """A step as a recorded run: the config, the lock, the run record and the hooks (see runner.execute)."""
        from mcnotify.runner import execute

        settings = self.settings()
        return self.run_with_meter(
            lambda meter: execute(settings, command, action, dry_run=dry_run, meter=meter, role=role)
        )

    def read_only(self, build: Callable[[Context], T]) -> T:
        """Run a view against the state without taking the lock or recording a run."""
        from mcnotify.runner import open_context

        settings = self.settings()

        def go() -> T:
            with open_context(settings, dry_run=True, lock=False) as ctx:
                return build(ctx)

        return self.guard(go)

    def exit_with_verdict(self, report: object) -> None:
        """After a report is rendered: exit with the failure it carries (refused notifications, a channel that
        gave up), which the run record and the alert hooks already have."""
        from mcnotify.runner import verdict

        problem = verdict(report)
        if problem is not None:
            self.fail(str(problem), problem.exit_code)


def application(ctx: typer.Context) -> Application:
    """The invocation's Application, which the app's callback put in the context (subcommands inherit it)."""
    found = ctx.find_object(Application)
    if found is None:  # a command invoked without the app's callback: a bug, not an operator's mistake
        raise RuntimeError("mcnotify: no Application in the context")
    return found


def _version(value: bool) -> None:
    if value:
        stdout_console().print(f"mcnotify {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[Path, typer.Option("--config", "-c", envvar="MCNOTIFY_CONFIG", help="Config file.")] = (
        DEFAULT_CONFIG_PATH
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
    show_contacts: Annotated[
        bool, typer.Option("--show-contacts", help="Do not mask emails and phone numbers in logs.")
    ] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    from rich.logging import RichHandler

    from mcnotify import logs

    cli = Application(config_path=config, quiet=quiet, verbose=verbose, log_json=log_json)
    # A progress bar only where someone watches: a terminal, normal verbosity, no JSON lines.
    cli.bars = cli.err.is_terminal and not quiet and not verbose and not log_json
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    terminal = RichHandler(console=cli.err, show_path=False, show_level=False, markup=False, rich_tracebacks=False)
    cli.redactor = logs.setup(
        level, json_lines=log_json, mask_contacts=not show_contacts, terminal_handler=terminal, stream=sys.stderr
    )
    ctx.obj = cli


class TerminalMeter:
    """Progress bars on the terminal for long steps (claims, sends), started at the first report and removed
    when the command ends; the journal gets the periodic progress lines instead."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars: Any = None
        self.tasks: dict[str, Any] = {}

    def __call__(self, task: str, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self.bars is None:
            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.bars.start()
        if task not in self.tasks:
            self.tasks[task] = self.bars.add_task(task, total=total or None)
        self.bars.update(self.tasks[task], completed=done, total=total or None)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None
