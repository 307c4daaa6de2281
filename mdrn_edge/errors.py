"""User-facing errors: one line that says what is wrong, where, and what to do.

The CLI turns an :class:`MdrnError` into that line and a non-zero exit code; anything else is a bug and keeps
its traceback.
"""


class MdrnError(Exception):
    """An error caused by the user's input, files or environment (not by a bug in mdrn-edge)."""

    exit_code = 1


class InputError(MdrnError):
    """An input file or folder cannot be used (not DICOM, truncated, wrong kind of image...)."""

    exit_code = 2


class ModelFileError(MdrnError):
    """A checkpoint, ONNX file or engine is missing, corrupt, foreign or incompatible."""

    exit_code = 3


class MissingDependencyError(MdrnError):
    """An optional dependency (torch, TensorRT, ...) is needed for this step and is not installed."""

    exit_code = 4


def require(module: str, extra: str):
    """Import an optional dependency or raise one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with: pip install 'mdrn-edge[{extra}]'"
        ) from None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A library's exception text cut to its first line, to embed in our one-line messages."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]
