"""Crash-safe file writes: atomic replace, fsynced JSON-lines appends, writable-folder checks.

Every file that a later run reads back (run configs, checkpoints' state, metrics, manifests,
dataset files) goes through here, so a kill or a full disk leaves either the old file or the new
one, never half of one.

Fault hook for tests: ``PAIRFORGE_FAULT=<point>:<n>`` makes the n-th (1-based) call of
`fault_point(<point>)` in this process SIGKILL the process itself, i.e. die exactly inside a
named write. Points used: ``checkpoint`` (inside a checkpoint write, its tensors on disk but not
state.json), ``model`` (RUN/.model-tmp written, not yet renamed), ``metrics`` (half a metrics
line written), ``write:<file name>`` (any `atomic_write` of that name, e.g.
``write:metrics.jsonl`` for the rewrite on resume or ``write:config.yaml``: the temporary file
complete, not renamed). Unset (the normal case) it costs one dict lookup.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pairforge.errors import PairforgeError

FAULT_ENV = "PAIRFORGE_FAULT"
_fault_calls: dict[str, int] = {}

# errno -> (reason, fix) for the messages of writes that failed.
_REASONS = {
    errno.ENOSPC: ("disk full", "free disk space or write to another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota or write elsewhere"),
    errno.EROFS: ("read-only file system", "choose a folder on a writable file system"),
    errno.EACCES: ("permission denied", "fix the folder's permissions or choose another folder"),
    errno.EPERM: ("operation not permitted", "choose a folder you may write to"),
    errno.ENOTDIR: (
        "a parent path exists as a file",
        "remove that file or choose another folder",
    ),
    errno.EEXIST: ("exists as a file", "remove the file or choose another folder"),
}

# Write failures the CLI reports as errors (the others are bugs and keep their traceback).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def fault_point(name: str) -> None:
    """Test hook: SIGKILL this process at the n-th call of point `name` (see module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, count = spec.rpartition(":")
    if not count.isdigit():  # no count given: the first call
        point, count = spec, "1"
    if point != name:
        return
    _fault_calls[name] = _fault_calls.get(name, 0) + 1
    if _fault_calls[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def os_error_reason(err: BaseException) -> tuple[str, str]:
    """(reason, fix) in words for an OSError (or a torch/safetensors write error wrapping one)."""
    if isinstance(err, OSError) and err.errno in _REASONS:
        return _REASONS[err.errno]
    text = str(err)
    # torch.save reports a full disk as "PytorchStreamWriter failed writing file ...: file write
    # failed" (inline_container.cc) without the errno; safetensors as "No space left on device".
    if "No space left" in text or "file write failed" in text or "inline_container" in text:
        return _REASONS[errno.ENOSPC]
    return (text.strip() or type(err).__name__, "check the disk and the folder, then rerun")


def write_error(path: str | Path, what: str, err: BaseException) -> PairforgeError:
    """PairforgeError '<path>: <what> cannot be written (<reason>); <fix>' for a failed write."""
    reason, fix = os_error_reason(err)
    return PairforgeError(f"{path}: {what} cannot be written ({reason}); {fix}.")


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Create folder `path` (and parents) and prove a file can be created in it.

    Raises PairforgeError "<path>: <what> cannot be written (<reason>); <fix>" when `path` is an
    existing file, on a read-only file system, not permitted, or the disk is full.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise write_error(path, what, OSError(errno.EEXIST, "exists as a file"))
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        if isinstance(err, FileExistsError):  # a parent is a file
            err = OSError(errno.ENOTDIR, str(err))
        raise write_error(path, what, err) from None
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` on a hidden temporary file next to `path`, fsync it, rename it to `path`.

    The temporary file (.<name>.tmp<pid>) is removed when anything fails; OSErrors propagate
    (callers turn them into PairforgeErrors with `write_error`, which knows their context).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        fault_point(f"write:{path.name}")  # tests: die with the new file complete, not renamed
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically (old content or new content, never a mix)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Replace `path` with UTF-8 `text` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Replace `path` with `obj` as JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append `obj` as one JSON line and fsync; a torn tail (crash, full disk) is dropped by
    `read_jsonl` on the next read. OSErrors propagate."""
    line = (json.dumps(obj) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        if os.environ.get(FAULT_ENV, "").split(":")[0] == "metrics":
            f.write(line[: len(line) // 2])  # die with half a line on disk, like a full disk
            f.flush()
            os.fsync(f.fileno())
            fault_point("metrics")
            f.write(line[len(line) // 2 :])
        else:
            f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[Any]:
    """The objects of a JSON-lines file ([] when it does not exist).

    A torn last line (a write that a kill or a full disk cut short) is dropped with a warning
    naming the file and line; a corrupt line before the last raises PairforgeError.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if number == len(lines):
                warnings.warn(
                    f"{path}: line {number} is incomplete (an interrupted write); dropped it",
                    stacklevel=2,
                )
                break
            raise PairforgeError(
                f"{path}: line {number} is not valid JSON ({err}); delete or repair that line "
                "(each line is one JSON object)."
            ) from None
    return rows


def write_jsonl(path: str | Path, rows: list[Any]) -> Path:
    """Replace `path` with `rows`, one JSON object per line, atomically (never truncated)."""
    return atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def iter_tmp_files(folder: str | Path, pattern: str = ".*.tmp*") -> Iterator[Path]:
    """Leftover temporary files of `atomic_write` in `folder` (from killed processes)."""
    folder = Path(folder)
    if folder.is_dir():
        yield from (p for p in folder.glob(pattern) if p.is_file())
