"""What every command shares: user errors as one line and an exit code, JSON output, progress bars."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from typing import Any, Callable

import click

from mdrn_edge.errors import INTERRUPTED_EXIT, OS_ERROR_EXIT, MdrnError, first_line, printable
from mdrn_edge.fileio import strict_json


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`MdrnError` (and a few OS errors about the user's paths) into ``Error: ...`` and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_third_party()
        try:
            return func(*args, **kwargs)
        except MdrnError as exc:
            fail(str(exc), exc.exit_code, kwargs.get("as_json"), details=getattr(exc, "details", None))
        except KeyboardInterrupt:  # asked for, not an error: said as such
            fail("interrupted; nothing partial was left under the output's name", INTERRUPTED_EXIT,
                 kwargs.get("as_json"), prefix="Stopped")
        except OSError as exc:  # permission, read-only or full disk, a path that is a file: the user's environment
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or first_line(exc)}; free space or choose a writable path and run again", OS_ERROR_EXIT,
                 kwargs.get("as_json"))

    return wrapper


# libraries that speak on their own (pydicom's "Invalid value for VR" warnings and decoder tracebacks, torch's
# UserWarnings): their words never reach the user's terminal; ours say what matters in one line
THIRD_PARTY_LOGGERS = ("py.warnings", "pydicom", "nibabel", "PIL", "onnxruntime", "openvino", "httpx", "pynetdicom",
                       "urllib3", "retrying", "dicomweb_client")


def quiet_third_party() -> None:
    """Route Python warnings into logging and silence the loggers of :data:`THIRD_PARTY_LOGGERS`."""
    logging.captureWarnings(True)
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [logging.NullHandler()], False


class OneLineFormatter(logging.Formatter):
    """Our log lines, with untrusted text in them (file names, DICOM strings) kept on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def setup_logging(level: int = logging.WARNING) -> None:
    """Our loggers' lines on stderr, one line each, message only."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def say(text: str, err: bool = False) -> None:
    """A line of output that may hold untrusted text, kept on one line."""
    click.echo(printable(text), err=err)


def fail(message: str, code: int, as_json: bool | None = None, prefix: str = "Error",
         details: dict[str, Any] | None = None) -> None:
    """One ``Error: ...`` line on stderr (and, with --json, ``{"error", "exit_code"}`` and the error's details, e.g.
    a STOW's result per instance, on stdout), then exit."""
    click.echo(f"{prefix}: {printable(message)}", err=True)
    if as_json:  # on one line: mdrn-node's --json is one object per line
        click.echo(strict_json({"error": message, "exit_code": code, **(details or {})}, indent=None))
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
        except click.UsageError as exc:  # click's own text may span lines (a missing choice lists one per line)
            raise click.UsageError(f"{' '.join(exc.format_message().split())} (see {ctx.command_path} --help)") from None


class OneLineCommand(_OneLineUsage, click.Command):
    pass


class OneLineGroup(_OneLineUsage, click.Group):
    command_class = OneLineCommand

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise click.UsageError(f"{' '.join(exc.format_message().split())} (see {ctx.command_path} --help)") from None


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


def runtime_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a :class:`~mdrn_edge.runtime.config.RuntimeConfig`, shared by mdrn-infer and mdrn-node;
    the command receives them as keywords and builds the config with :func:`runtime_config`."""
    from mdrn_edge.runtime.config import BACKENDS, DEVICES, PRECISIONS

    options = [
        click.option("--backend", type=click.Choice(BACKENDS), default="auto",
                     help="auto: TensorRT for engines; for ONNX files ONNX Runtime on a CUDA GPU, OpenVINO on a CPU "
                          "where installed (measured fastest), else ONNX Runtime."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto",
                     help="auto: the fastest precision the model file passed a gate for on this CPU (BF16 on CPUs with "
                          "native BF16, INT8 for INT8 files), else its own; an explicit one is refused where it cannot "
                          "run or was never gated."),
        click.option("--allow-ungated", is_flag=True,
                     help="Run a reduced --precision that the model file records no passed gate for (unmeasured)."),
        click.option("--device", type=click.Choice(DEVICES), default="auto",
                     help="auto: CUDA, then CPU (ONNX Runtime); gpu/npu: OpenVINO's Intel GPU or NPU."),
        click.option("--trt-ep", "tensorrt_ep", is_flag=True, help="Let ONNX Runtime try its TensorRT execution provider first."),
        click.option("--allow-host-code", is_flag=True, help="Run a version-compatible engine whose plan embeds TensorRT's lean runtime (host code from the file): only engines you trust."),
        click.option("--lean-runtime", type=click.Path(dir_okay=False, exists=True), help="The building TensorRT's libnvinfer_lean library, for a --exclude-lean-runtime engine run by a later TensorRT."),
        click.option("--threads", type=click.IntRange(1, MAX_THREADS), help="CPU threads for ONNX Runtime or OpenVINO  [default: the runtime's choice]."),
        click.option("--cache-dir", metavar="DIR|off", help="Where OpenVINO's compiled models are cached  [default: ~/.cache/mdrn-edge/openvino]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def runtime_config(options: dict[str, Any]):
    """The :class:`~mdrn_edge.runtime.config.RuntimeConfig` of :func:`runtime_options`' values."""
    from mdrn_edge.runtime.config import RuntimeConfig

    return RuntimeConfig(**options)


def check_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a :class:`~mdrn_edge.runtime.checks.CheckConfig`, shared by mdrn-infer and mdrn-node; the
    command receives them as keywords and builds the config with :func:`check_config`."""
    from mdrn_edge.runtime.checks import CHECK_MODES, ENFORCE_TOLERANCE_DB

    options = [
        click.option("--checks", "checks", type=click.Choice(CHECK_MODES), default="fast",
                     help="Check every output slice against its input: fast = data consistency and grid energy (a few "
                          "% of the time); full = also the uncertainty of the 8-flip self-ensemble (8 inferences per "
                          "slice); off = none (huge slices then stream in bands). Figures go to --json and into each "
                          "DICOM instance; a slice past the model's thresholds is flagged with the reason."),
        click.option("--consistency", type=click.Choice(["check", "enforce"]), default="check",
                     help="enforce: correct each output so that, degraded by the model's own forward model, it equals "
                          "the acquired slice within --consistency-tolerance (detail the degradation cannot see is kept)."),
        click.option("--consistency-tolerance", type=click.FloatRange(20, 90), default=ENFORCE_TOLERANCE_DB,
                     help="PSNR in dB, over the normalised range, that --consistency enforce reaches."),
        click.option("--ensemble", is_flag=True,
                     help="Write the mean of the model's outputs over the 8 flips/rotations of each slice (8x the time; "
                          "its spread is then the uncertainty)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def check_config(options: dict[str, Any]):
    """The :class:`~mdrn_edge.runtime.checks.CheckConfig` of :func:`check_options`' values, taken out of
    ``options`` (the rest are the runtime's)."""
    from mdrn_edge.runtime.checks import CheckConfig

    return CheckConfig(mode=options.pop("checks"), enforce=options.pop("consistency") == "enforce",
                       tolerance_db=options.pop("consistency_tolerance"), ensemble=options.pop("ensemble"))


def web_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """How DICOMweb servers are reached (:class:`~mdrn_edge.runtime.dicomweb.WebConfig`), for mdrn-infer and mdrn
    send; the command receives them as keywords and builds the config with :func:`web_config`."""
    from mdrn_edge.runtime.dicomweb import AUTH_ENV, RETRIES, TIMEOUT_S

    options = [
        click.option("--auth-file", type=click.Path(dir_okay=False),
                     help=f"DICOMweb credentials: a file holding 'Bearer TOKEN' or 'Basic USER:PASSWORD'  [default: the "
                          f"{AUTH_ENV} environment variable, in the same form]. Never on the command line."),
        click.option("--ca-bundle", type=click.Path(dir_okay=False), help="PEM file of the CA that signed the DICOMweb server's certificate."),
        click.option("--insecure", is_flag=True, help="Do not verify the DICOMweb server's TLS certificate (test networks only; says so)."),
        click.option("--http-timeout", type=click.FloatRange(0.1, 3600), default=TIMEOUT_S, help="Seconds each DICOMweb request may take (connect, then read)."),
        click.option("--http-retries", type=click.IntRange(0, 20), default=RETRIES, help="Further tries of a DICOMweb request after a connection error, a timeout or a 5xx, at once, then after waits doubling from 2 s (never after a 4xx)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def web_config(options: dict[str, Any]):
    """The :class:`~mdrn_edge.runtime.dicomweb.WebConfig` of :func:`web_options`' values, taken out of ``options``."""
    from mdrn_edge.runtime.dicomweb import WebConfig

    return WebConfig(auth_file=options.pop("auth_file"), ca_bundle=options.pop("ca_bundle"),
                     insecure=options.pop("insecure"), timeout=options.pop("http_timeout"),
                     retries=options.pop("http_retries"))
