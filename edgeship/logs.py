"""Logging set-up for the processes edgeship starts itself: the CLI, and `edgeship build`'s workers.
The library modules only log; upstream libraries' banners and warnings (which say nothing about the
user's model) are silenced here, unless the user asked for debug output."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

UPSTREAM = ("torch", "torchao", "torch.onnx", "onnxscript", "executorch", "litert_torch", "absl",
            "root", "transformers", "torch._export", "torch.export")


def configure(level: int) -> None:
    """Log at `level` on stderr. Above DEBUG, upstream libraries log errors only; they log through
    the root logger too, so edgeship's own loggers get `level` explicitly."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level > logging.DEBUG:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GLOG_minloglevel", "3")
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
        for name in UPSTREAM:
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("edgeship").setLevel(level)


def quiet_torch() -> None:
    """torch configures its own loggers when imported: set them after importing it."""
    if logging.getLogger("edgeship").getEffectiveLevel() <= logging.DEBUG:
        return
    import torch._logging

    torch._logging.set_logs(all=logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("torch", "torchao", "executorch", "litert_torch", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("torch.fx.experimental.symbolic_shapes").setLevel(logging.CRITICAL)


# what the runtimes' native code prints on every run, whatever the model: their banners, not the user's news
NATIVE_BANNERS = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"[IW]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] ",  # absl / glog info and warning lines (oneDNN, the converter)
    r"\[cpuinfo_utils\.cpp:\d+\] ",  # ExecuTorch's CPU probe
    r"INFO: (Created|Initialized) TensorFlow Lite",
)
BANNER = "|".join(f"(?:{p})" for p in NATIVE_BANNERS)  # one pattern, matched at the start of a line

_FILTER = r"""
import re, sys
banner = re.compile(sys.argv[1].encode())
for line in sys.stdin.buffer:
    if not banner.match(line):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def filter_native_stderr() -> None:
    """Native libraries write to file descriptor 2 directly, past Python's logging. From here on that
    descriptor feeds a small filter process that drops their banners (NATIVE_BANNERS) and passes every other
    line on, even when this process dies (a converter's fatal error still reaches the user); Python's own
    sys.stderr (logging, progress, errors) keeps writing to the terminal or file it was given."""
    import atexit
    import io
    import subprocess

    sys.stderr.flush()
    real = os.dup(2)
    proc = subprocess.Popen([sys.executable, "-S", "-c", _FILTER, BANNER], stdin=subprocess.PIPE, stdout=real,
                            close_fds=True)
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()
    sys.stderr = io.TextIOWrapper(os.fdopen(real, "wb", buffering=0), write_through=True,
                                  encoding=sys.stderr.encoding, errors="backslashreplace")

    def finish() -> None:
        os.close(2)  # the filter sees the end of its input and exits
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()

    atexit.register(finish)


class StageLines:
    """Progress as text lines, for a log that is not a terminal (CI): each stage is written when it ends
    (its ticks reach the total, the next stage starts, or the command finishes), with its duration; `rows`
    keeps every ended stage (task, total, seconds), for benchmarks."""

    def __init__(self, write, quiet: bool = False) -> None:
        self._write, self._quiet, self._open = write, quiet, None
        self.rows: list[dict] = []

    def start(self, task: str, total: int):
        import time

        self.finish()
        stage = self._open = {"task": task, "total": total, "done": 0, "started": time.perf_counter()}

        def advance(n: int) -> None:
            stage["done"] += n
            if stage is self._open and stage["done"] >= stage["total"]:
                self.finish()

        return advance

    def finish(self) -> None:
        import time

        stage, self._open = self._open, None
        if stage is None:
            return
        seconds = time.perf_counter() - stage["started"]
        self.rows.append({"stage": stage["task"], "total": stage["total"], "seconds": round(seconds, 2)})
        if not self._quiet:
            self._write(f"{stage['task']} ({stage['total']}) ... {seconds:.1f} s")


@contextlib.contextmanager
def without_banners():
    """Native code that prints through Python's sys.stderr (pybind11's stream redirection): its output in
    the block is held back, and the lines that are not NATIVE_BANNERS are written when the block ends."""
    import io
    import re

    held, previous = io.StringIO(), sys.stderr
    sys.stderr = held
    try:
        yield
    finally:
        sys.stderr = previous
        banner = re.compile(BANNER)
        kept = [line for line in held.getvalue().splitlines(keepends=True) if not banner.match(line)]
        if kept:
            previous.write("".join(kept))
