"""Atomic writes: every file or folder mdrn-edge produces appears under its final name complete, or not at all."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from mdrn_edge.errors import InputError, OutputConflict


def _temp_sibling(path: Path, directory: bool) -> Path:
    """A new hidden temporary file or folder beside ``path`` (same file system: the final rename is atomic),
    keeping the final suffixes (.nii.gz, .onnx: some writers choose the format from the name), with the
    permissions a normal file or folder would get (mkstemp/mkdtemp create private ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if directory else 0o666) & ~umask)
    return tmp


def _remove(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` on success, delete it on failure."""
    path = Path(path)
    tmp = _temp_sibling(path, directory=False)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def strict_json(obj: Any, indent: int | None = 2) -> str:
    """JSON that strict parsers accept: every non-finite float (inf, NaN) written as null (``indent=None``: one
    line, for JSON-lines streams)."""
    return json.dumps(_finite(obj), indent=indent, default=str, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(strict_json(obj) + "\n")
    return Path(path)


def file_sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


OUTPUT_MARKER = ".mdrn-edge-output"  # in every output folder mdrn-edge writes: what --overwrite may replace


def _contains(parent: Path, child: Path) -> bool:
    return child == parent or parent in child.parents


def _resolved(path: Path) -> Path:
    """``path.resolve()``, with a symbolic-link loop as one line."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # Python 3.11 raises RuntimeError for a loop, 3.13 OSError
        raise InputError(f"{path}: a symbolic-link loop; give the real file or folder") from None


def check_output_path(out: str | Path, inputs: Sequence[str | Path], overwrite: bool,
                      is_ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse, before any work, an output that would put an input at risk: one that is an input, lies above an
    input (a study folder around the series), is a symlink, or exists without ``overwrite``; with ``overwrite``
    an existing output is replaced only if mdrn-edge wrote it (its marker, or ``is_ours`` for a file)."""
    out = Path(out)
    if out.is_symlink():
        raise InputError(f"{out}: is a symbolic link; give a real path for --output (nothing is written through links)")
    target = _resolved(out)
    for item in map(Path, inputs):
        source = _resolved(item)
        if _contains(target, source):
            where = "is" if target == source else "contains"
            raise InputError(f"{out}: {where} the input {item}; writing there could delete it, choose another --output")
        if source.is_dir() and _contains(source, target):  # inputs are never modified, not even by an added folder
            raise InputError(f"{out}: lies inside the input folder {item}; inputs are never modified, choose an "
                             "--output outside it")
    if not out.exists():
        return
    if not overwrite:
        raise InputError(f"{out}: already exists; choose a new --output or pass --overwrite")
    ours = (out / OUTPUT_MARKER).is_file() if out.is_dir() else bool(is_ours and is_ours(out))
    if not ours:
        raise InputError(f"{out}: exists and was not written by mdrn-edge; --overwrite only replaces an earlier "
                         "mdrn-edge output, choose another --output")


def publish_dir(stage: Path, out: Path, overwrite: bool, marker: dict[str, Any]) -> None:
    """Move a complete staged folder to ``out``, re-checking ``out`` now: a folder that appeared there during the
    run (a user's, or a concurrent run's result) is never replaced unless it is an mdrn-edge output and
    ``overwrite`` was asked; the previous output is set aside first and deleted only once the new one is in place."""
    (stage / OUTPUT_MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")
    old = None
    if out.exists() or out.is_symlink():
        if not (overwrite and out.is_dir() and not out.is_symlink() and (out / OUTPUT_MARKER).is_file()):
            raise OutputConflict(f"{out}: appeared while this run was working and is not an output it may replace; "
                                 "nothing was written, choose another --output")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.rename(stage, out)  # fails if a non-empty folder took the name meanwhile: it is left alone
    except OSError:
        if old is not None:
            os.replace(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        raise OutputConflict(f"{out}: appeared while this run was working; nothing was replaced, choose another --output") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_file(tmp: Path, out: Path, overwrite: bool, is_ours: Callable[[Path], bool]) -> None:
    """Rename a complete temporary file onto ``out``, re-checking ``out`` now (as :func:`publish_dir`)."""
    if out.exists() or out.is_symlink():
        if not (overwrite and not out.is_symlink() and is_ours(out)):
            raise OutputConflict(f"{out}: appeared while this run was working and is not an output it may replace; "
                                 "nothing was written, choose another --output")
    os.replace(tmp, out)


@contextmanager
def staged(out: Path, directory: bool) -> Iterator[Path]:
    """A hidden temporary sibling of ``out`` to write into and publish (:func:`publish_dir`,
    :func:`publish_file`); removed on any failure or interruption."""
    tmp = _temp_sibling(out, directory)
    try:
        yield tmp
    finally:
        _remove(tmp)


def project_path(path: str | Path) -> str:
    """``path`` as reports and committed results name it: relative to the project (``../shared/data/...``), or to
    the working directory where mdrn-edge is installed as a package; never the machine's absolute path."""
    import mdrn_edge

    root = Path(mdrn_edge.__file__).resolve().parents[1]
    base = root if (root / "setup.cfg").is_file() else Path.cwd()
    return os.path.relpath(Path(path).resolve(), base)
