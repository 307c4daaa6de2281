"""What every command shares: user errors as one line and an exit code, JSON output, progress bars."""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any, Callable

import click

from mdrn_edge.errors import INTERRUPTED_EXIT, OS_ERROR_EXIT, MdrnError, first_line
from mdrn_edge.fileio import strict_json


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`MdrnError` (and a few OS errors about the user's paths) into ``Error: ...`` and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MdrnError as exc:
            fail(str(exc), exc.exit_code, kwargs.get("as_json"))
        except KeyboardInterrupt:
            fail("interrupted: stopped cleanly; nothing partial was left under the output's name", INTERRUPTED_EXIT,
                 kwargs.get("as_json"))
        except OSError as exc:  # permission, read-only or full disk, a path that is a file: the user's environment
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or first_line(exc)}; free space or choose a writable path and run again", OS_ERROR_EXIT,
                 kwargs.get("as_json"))

    return wrapper


def fail(message: str, code: int, as_json: bool | None = None) -> None:
    """One ``Error: ...`` line on stderr (and, with --json, ``{"error", "exit_code"}`` on stdout), then exit."""
    click.echo(f"Error: {message}", err=True)
    if as_json:
        emit_json({"error": message, "exit_code": code})
    sys.exit(code)


def emit_json(obj: Any) -> None:
    """One strict JSON object on stdout (no Infinity/NaN tokens)."""
    click.echo(strict_json(obj))


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr (quiet when ``enabled`` is False, e.g. with --json into a pipe)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, file=sys.stderr, mininterval=1.0,
                dynamic_ncols=True)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON object on stdout.")

class _OneLineUsage:
    """Usage errors (a bad option value) as one ``Error: ...`` line, like every other refusal."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except click.UsageError as exc:
            exc.message = f"{exc.message} (see {ctx.command_path} --help)"
            exc.ctx = None  # click then prints the message alone
            raise


class OneLineCommand(_OneLineUsage, click.Command):
    pass


class OneLineGroup(_OneLineUsage, click.Group):
    command_class = OneLineCommand

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            exc.message, exc.ctx = f"{exc.message} (see {ctx.command_path} --help)", None
            raise


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (``kill``, schedulers, systemd) both raise KeyboardInterrupt, so every stage folder and
    temporary file is removed on the way out; a job started in the background by a non-interactive shell
    inherits SIGINT as ignored, so the handler is installed explicitly."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


# every command: -h as well as --help, defaults shown in --help, and --version
SETTINGS = {"show_default": True, "help_option_names": ["-h", "--help"]}
MAX_THREADS = 4 * (os.cpu_count() or 1)  # more threads than this only costs memory


def version_option(func: Callable[..., Any]) -> Callable[..., Any]:
    import mdrn_edge

    return click.version_option(mdrn_edge.__version__, "--version", prog_name="mdrn-edge")(func)
