"""User-facing errors: one line that says what is wrong, where, and what to do.

The CLI turns an :class:`MdrnError` into that line and a non-zero exit code; anything else is a bug and keeps
its traceback. Every exit code is here, in one place:

====  =====================================================================================
 1    other user error                          :class:`MdrnError`
 2    an input file, folder or argument         :class:`InputError`
 3    a checkpoint, ONNX file or engine          :class:`ModelFileError`
 4    an optional dependency is missing          :class:`MissingDependencyError`
 5    the operating system refused a path        (permission, read-only or full disk; ``cli.common``,
                                                :class:`PathRefused`)
 6    an exported file failed its check          :class:`ExportCheckError`
 7    TensorRT could not build an engine         :class:`EngineBuildError`
 8    the PACS refused or could not be reached   :class:`PacsError`
 9    the output was taken during the run        :class:`OutputConflict`
 10   the inference server (Triton) refused or   :class:`InferenceServerError`
      could not be reached
 130  interrupted (Ctrl-C or SIGTERM); partial outputs were removed
====  =====================================================================================
"""

OS_ERROR_EXIT = 5
INTERRUPTED_EXIT = 130


class MdrnError(Exception):
    """An error caused by the user's input, files or environment (not by a bug in mdrn-edge)."""

    exit_code = 1


class InputError(MdrnError):
    """An input file or folder cannot be used (not DICOM, truncated, wrong kind of image...)."""

    exit_code = 2


class ModelFileError(MdrnError):
    """A checkpoint, ONNX file or engine is missing, corrupt, foreign or incompatible."""

    exit_code = 3


class OutputConflict(MdrnError):
    """The output path was taken by something else while a run was working; nothing was replaced."""

    exit_code = 9


class MissingDependencyError(MdrnError):
    """An optional dependency (torch, TensorRT, ...) is needed for this step and is not installed."""

    exit_code = 4


PIP_NAMES = {"onnxconverter_common": "onnxconverter-common"}  # import name -> the name pip installs it by


def install_hint(module: str, extra: str) -> str:
    """What installs ``module`` from where the user stands: the package alone, or the extra from mdrn-edge's source
    (a clone, which is where mdrn-edge is installed from: it is not published on a registry)."""
    from pathlib import Path

    package = PIP_NAMES.get(module.split(".")[0], module.split(".")[0])
    first = "pip install torch==2.13.0 (or your CUDA build of torch) first, then " if module == "torch" else ""
    root = Path(__file__).resolve().parents[1]
    source = (f"pip install -e '{root}[{extra}]'" if (root / "setup.cfg").is_file()
              else f"pip install '.[{extra}]' in the mdrn-edge source folder")
    return f"{first or f'pip install {package}, or '}everything the {extra} step needs: {source}"


def require(module: str, extra: str):
    """Import an optional dependency or raise one line saying what installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{module} is not installed ({exc}); {install_hint(module, extra)}") from None


def printable(text: object) -> str:
    """Text for one line of output: every control character (a newline in a file name or a SeriesDescription, an
    escape sequence) written as its escape, so that untrusted text can never forge a second line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A library's exception text cut to its first line, to embed in our one-line messages."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


class ExportCheckError(MdrnError):
    """An exported file failed a numerical check; it is not written under its final name."""

    exit_code = 6


class EngineBuildError(MdrnError):
    exit_code = 7


class PacsError(MdrnError):
    """The PACS could not be reached or refused the series; the local output is kept."""

    exit_code = 8


class InferenceServerError(MdrnError):
    """A Triton server could not be reached, stopped answering, or refused a model or a request."""

    exit_code = 10


class PathRefused(MdrnError):
    """A folder mdrn-edge must write (a cache) cannot be written: the same exit as the OS errors ``cli.common``
    turns into one line."""

    exit_code = OS_ERROR_EXIT
