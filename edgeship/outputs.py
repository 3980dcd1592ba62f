"""The output folder: checked before an export starts, written through a staging folder that replaces the
final one in one rename, and a full disk reported as one line with nothing left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from edgeship.errors import ConfigError, EdgeshipError

# an export writes the float model three times (ONNX, .pte, .tflite) and its int8 form four times (a quarter
# each), plus scratch files: about four times the float weights
SPACE_PER_WEIGHT_BYTE = 4
_FULL = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL = 1 << 16  # a failed write with less free than this is a full disk, whatever the writer said


class OutOfSpaceError(EdgeshipError):
    """The disk of the output folder (or of the system's temporary folder) filled up."""


def existing_parent(path: Path) -> Path:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return probe


def check_writable(out: Path) -> None:
    probe = existing_parent(out)
    if not probe.is_dir():
        raise ConfigError(f"output location {out} is inside {probe}, which is a file; pass --out a folder")
    try:  # a real write: permission bits say nothing for root, read-only or immutable folders
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        if exc.errno in _FULL:
            raise OutOfSpaceError(f"no space left on the disk of {probe}; free space there or pass --out a "
                                  "folder on another disk") from exc
        raise ConfigError(f"output folder {probe} is not writable ({exc.strerror}); "
                          "pass --out a folder you can write to") from exc


def weight_bytes(module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def check_space(out: Path, needed: int) -> None:
    """Refuses before any work when the output disk has less free space than the export needs."""
    probe = existing_parent(out)
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OutOfSpaceError(f"{probe} has {_size(free)} free but this export needs about {_size(needed)} "
                              f"({SPACE_PER_WEIGHT_BYTE}x the model's float weights); free space there or pass "
                              "--out a folder on another disk")


def out_of_space(exc: BaseException, folder: Path, needed: int) -> OutOfSpaceError | None:
    """The error to raise when `exc` (or an error it wraps) is a full disk, or `folder`'s disk is nearly full;
    else None. Runtimes' converters report a failed write in their own types, so their messages are read too."""
    seen: set[int] = set()
    full = _free(folder) < NEARLY_FULL
    while exc is not None and id(exc) not in seen and not full:
        seen.add(id(exc))
        full = (isinstance(exc, OSError) and exc.errno in _FULL) or "No space left on device" in str(exc)
        exc = exc.__cause__ or exc.__context__
    if full:
        return OutOfSpaceError(
                f"no space left on device while writing to {folder} ({_size(_free(folder))} free there, "
                f"{_size(_free(Path(tempfile.gettempdir())))} in {tempfile.gettempdir()}); this export needs about "
                f"{_size(needed)}; free space or pass --out a folder on another disk. Nothing was written")
    return None


def _free(folder: Path) -> int:
    return shutil.disk_usage(existing_parent(folder)).free


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count < 1e9 else f"{count / 1e9:.2f} GB"


@contextlib.contextmanager
def staging(final: Path):
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename, on
    any failure (or interrupt) it is removed and `final` is left as it was."""
    created = [p for p in [final.parent, *final.parent.parents] if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    stage.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders this export created (deepest first) when they are still empty."""
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
