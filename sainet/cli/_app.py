"""The Typer app, its error handling and the option types shared by every command.

Only the CLI prints and picks exit codes. A command body parses its options (the types below
reject bad values before the body runs), calls one library function and prints the result;
`run` maps every typed error to one line on stderr and the exit code of `EXIT_CODES`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import typer
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from cache_tools.format import CONTAINERS, MODES
from sainet.cli._console import SafeConsole
from sainet.core.datasets import LAYOUTS
from sainet.core.errors import SainetError
from sainet.core.geometry import parse_imgsz, parse_wxh
from sainet.profiles import profile_names
from sainet.settings import parse_bytes, parse_device

__all__ = ["app", "main", "console", "err", "EXIT_CODES", "run", "progress_bar", "bar_factory"]

log = logging.getLogger("sainet")

#: Exit code -> meaning; shown in `sainet --help` and README.md (tests/test_cli_errors.py keeps them true).
EXIT_CODES = {
    0: "success",
    1: "the command ran and found a problem (check: not usable; verify: bad records), or a file system error",
    2: "bad usage: an unknown or invalid option value, a missing option, an unreadable config; or a dataset that cannot be read",
    3: "an image cannot be decoded (the error names the file or record)",
    4: "a store is missing, foreign, damaged, of another version, or exists without --force",
    5: "it does not fit: the store, the loader buffers, the decoded images or the model's training memory exceed the free "
       "space, RAM or GPU memory, or a size cannot be allocated (synth --size, --imgsz, --batch); the message says what would fit",
    6: "the ranks of a distributed run disagree (store, batch) or a rank failed",
    75: "train was preempted (SIGTERM or SIGUSR1): a checkpoint was saved; requeue it with --resume RUN/weights/last.pt",
    130: "interrupted (Ctrl-C); nothing half-written is left as a valid store",
}

def _width(stream: Any) -> int | None:
    """Rich's width, except when the stream is no terminal (a pipe, `tee`, a CI log) and COLUMNS is unset:
    rich would then cut tables to 80 columns (the bench table's cells became `de…`); logs get 160."""
    isatty = getattr(stream, "isatty", None)
    return None if (isatty and isatty()) or os.environ.get("COLUMNS") else 160


console = SafeConsole(width=_width(sys.stdout))  # names are shown with control characters as \xNN
err = SafeConsole(stderr=True, width=_width(sys.stderr))


class SainetGroup(TyperGroup):
    """Usage errors as one line on stderr (not a framed panel), with the exit code of EXIT_CODES."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # click's usage errors (bad option values, unknown options, ...)
            # `sainet` alone: the help was shown when the error was made (its class is not public: matched by name)
            rv = e.exit_code if type(e).__name__ == "NoArgsIsHelpError" else _usage_error(e)
        except typer.Abort:
            err.print("[yellow]aborted[/]")
            rv = 1
        rv = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(rv)
        return rv


def _usage_error(e: typer.TyperException) -> int:
    ctx = getattr(e, "ctx", None)
    hint = f" (see `sainet {ctx.info_name} --help`)" if ctx is not None and ctx.parent is not None else ""
    err.print(f"[red]error:[/] {escape(e.format_message())}{hint}", soft_wrap=True)
    return e.exit_code


def _exit_code_help() -> str:
    return "Exit codes:\n\n" + "\n".join(f"* **{code}** {text}" for code, text in EXIT_CODES.items())


app = typer.Typer(
    name="sainet",
    cls=SainetGroup,
    help="Data pipeline and training front end for the SAI-Net wildfire smoke/fire detector.\n\n" + _exit_code_help(),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    from sainet import __version__

    def of(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    console.print(f"sainet {__version__} (ultralytics {of('ultralytics')}, torch {of('torch')}, "
                  f"python {sys.version.split()[0]})", highlight=False)
    raise typer.Exit(0)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging (and the traceback of an error)."),
          version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the versions of sainet, Ultralytics, torch and Python, and exit.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)], force=True,
    )


def _fail(message: str, code: int, exc: BaseException) -> None:
    log.debug("traceback", exc_info=exc)  # shown with --verbose
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code) from None


def run(fn: Callable[[], int | None]) -> None:
    """Run a command body; map errors from bad input to one line and an exit code (EXIT_CODES)."""
    try:
        code = fn() or 0
    except SainetError as e:
        _fail(str(e), e.exit_code, e)
    except typer.BadParameter:
        raise
    except (ValueError, KeyError) as e:  # from a value the types above could not judge alone
        _fail(str(e.args[0]) if e.args else repr(e), 2, e)
    except OSError as e:
        _fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", 1, e)
    except MemoryError as e:  # an allocation no plan caught (numpy's _ArrayMemoryError says how much)
        _fail(f"it does not fit in memory: {e or 'an allocation failed'}; use a smaller size, batch or shape", 5, e)
    except RecursionError as e:
        _fail(f"input nested too deeply to read ({e})", 2, e)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    raise typer.Exit(code)


# ---------------------------------------------------------------------------------------------- option types
# Parsers given to typer.Option(parser=...): a bad value is a usage error naming the option (exit 2).


def _parser(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: Any) -> Any:
        if not isinstance(text, str):  # a default already parsed
            return text
        try:
            return fn(text)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None

    parse.__name__ = fn.__name__
    return parse


imgsz_type = _parser(parse_imgsz)  # "1440x808" or "640" -> (H, W) stride-padded
size_type = _parser(parse_wxh)  # "1440x808" -> (W, H) exact
bytes_type = _parser(parse_bytes)  # "125GB" -> int
device_type = _parser(parse_device)


def _key_value(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected key=value, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)  # numbers, booleans and lists as YAML reads them
    except yaml.YAMLError:
        raise ValueError(f"{text!r}: the value is not valid YAML") from None


key_value_type = _parser(_key_value)


def _class_ids(text: str) -> dict[int, str]:
    """``1=smoke,2=fire`` -> {1: "smoke", 2: "fire"}."""
    out: dict[int, str] = {}
    for item in (i for i in text.split(",") if i.strip()):
        key, sep, name = item.partition("=")
        try:
            out[int(key)] = name.strip()
        except ValueError:
            raise ValueError(f"expected ID=NAME[,ID=NAME], got {text!r}") from None
        if not sep or not name.strip():
            raise ValueError(f"expected ID=NAME[,ID=NAME], got {text!r}")
    return out


class_ids_type = _parser(_class_ids)

Layout = Literal[tuple(LAYOUTS)]  # type: ignore[valid-type]
Container = Literal[CONTAINERS]  # type: ignore[valid-type]
Mode = Literal[MODES]  # type: ignore[valid-type]
#: --profile of every command: checked by `sainet.profiles.choose_profile` (an unknown name or a bad
#: file is a SettingsError naming it, exit 2)
PROFILE_HELP = (f"auto (the nearest to this host), a profile name ({', '.join(profile_names())}) or a profile file "
                "of your own (.yaml, the shape of configs/profiles/*.yaml)")


# ---------------------------------------------------------------------------------------------- progress


class _LineProgress:
    """What a log gets instead of a live bar (stderr is no terminal: a pipe, `tee`, CI): one plain line per
    task every `interval` seconds while it advances, and a last line when it ends, with the time the work
    took (up to its last step, not up to when the command moved on)."""

    def __init__(self, console: SafeConsole, interval: float) -> None:
        self._console, self._interval = console, interval
        self._tasks: list[dict[str, Any]] = []

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:  # the error's one line says what happened
            return
        for t in self._tasks:
            self._line(t, final=True)

    def add_task(self, description: str, total: int | None = None, **fields: Any) -> int:
        now = time.perf_counter()
        self._tasks.append({"description": description, "total": total, "completed": 0, "fields": dict(fields),
                            "start": now, "last": now, "end": now})
        return len(self._tasks) - 1

    def update(self, task: int, *, advance: int = 0, total: int | None = None, completed: int | None = None,
               **fields: Any) -> None:
        t = self._tasks[task]
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance:
            t["completed"] += advance
            t["end"] = time.perf_counter()
        t["fields"].update(fields)
        if t["end"] - t["last"] >= self._interval:
            self._line(t)

    def _line(self, t: dict[str, Any], final: bool = False) -> None:
        t["last"] = t["end"]
        total = f"/{t['total']}" if t["total"] else ""
        rate = t["fields"].get("rate") or ""
        elapsed = t["end"] - t["start"]
        self._console.print(f"{t['description']}: {t['completed']}{total}{' ' + rate if rate else ''} "
                            f"{elapsed:.1f}s{' done' if final else ''}", soft_wrap=True, highlight=False)


#: Seconds between two plain progress lines in a log.
LOG_PROGRESS_INTERVAL = 10.0


def _progress(*columns: Any) -> Any:
    """A live rich bar on a terminal; plain periodic lines in a log."""
    if err.is_terminal:
        return Progress(*columns, console=err)
    return _LineProgress(err, LOG_PROGRESS_INTERVAL)


class _Bar:
    """What `progress_bar` yields: call it to advance; `start(total, done)` once the work is known."""

    def __init__(self, progress: Any, task: int, unit: str) -> None:
        self._p, self._task, self._unit = progress, task, unit
        self._start, self._done = time.perf_counter(), 0

    def __call__(self, n: int = 1) -> None:
        self._done += n
        elapsed = time.perf_counter() - self._start
        self._p.update(self._task, advance=n, rate=f"{self._done / elapsed:,.1f} {self._unit}/s" if elapsed > 0 else "")

    def start(self, total: int, done: int = 0) -> None:
        self._p.update(self._task, total=total, completed=done)
        self._start = time.perf_counter()


@contextmanager
def progress_bar(total: int | None, description: str, unit: str = "img") -> Iterator[_Bar]:
    """A rich progress bar on stderr with the rate and the ETA (plain periodic lines when stderr is a log)."""
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with _progress(*columns) as p:
        yield _Bar(p, p.add_task(description, total=total, rate=""), unit)


@contextmanager
def bar_factory(prefix: str = "") -> Iterator[Callable[[str, int | None], Callable[[int], None]]]:
    """Several bars, one per named step (what bench.run_bench's `progress` argument takes)."""
    with _progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed} img"),
                   TimeElapsedColumn()) as p:
        def bar(name: str, total: int | None) -> Callable[[int], None]:
            task = p.add_task(prefix + name, total=total)
            return lambda n: p.update(task, advance=n)

        yield bar


def main() -> None:
    app()
