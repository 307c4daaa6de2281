"""What every command shares: user errors as one line and an exit code, JSON output, progress bars."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from mdrn_edge.errors import MdrnError


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`MdrnError` (and a few OS errors about the user's paths) into ``Error: ...`` and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MdrnError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            click.echo(f"Error: {exc.filename or ''}: {exc.strerror}; choose another path", err=True)
            sys.exit(5)

    return wrapper


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr (quiet when ``enabled`` is False, e.g. with --json into a pipe)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, file=sys.stderr, mininterval=1.0,
                dynamic_ncols=True)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON object on stdout.")

# every command: -h as well as --help, defaults shown in --help, and --version
SETTINGS = {"show_default": True, "help_option_names": ["-h", "--help"]}


def version_option(func: Callable[..., Any]) -> Callable[..., Any]:
    import mdrn_edge

    return click.version_option(mdrn_edge.__version__, "--version", prog_name="mdrn-edge")(func)
