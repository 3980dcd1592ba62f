"""A second process for work that can run beside this one: on a machine with two or more cores, an export
hands one runtime's lowering (a picklable function and its arguments) to it and lowers the others itself.

The process is a new Python interpreter, never a fork (a fork of a process that has started JAX's or
OpenMP's threads can deadlock), and started early so that its imports overlap the work before; the work
is sent in one message and each result comes back in order. `EDGESHIP_LOWER_APART=0` turns it off (the
suite does, since its workers already use every core); a build running several jobs at once turns it off
for them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Callable

from edgeship.errors import ExportError

OFF = ("0", "off", "no", "false")


def wanted(setting: bool | None) -> bool:
    """Whether to lower in a second process: `setting` when given, else when this process may use two or
    more cores and EDGESHIP_LOWER_APART is not 0."""
    if setting is not None:
        return setting
    if os.environ.get("EDGESHIP_LOWER_APART", "").strip().lower() in OFF:
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores >= 2


class Worker:
    """One new Python process (`python -m edgeship.apart`: it never runs the caller's main script, as
    multiprocessing's spawn would) running `(function, args)` units in order; start it early, `send()` the
    units once, `result()` each in turn, `close()` always (a worker still busy is stopped)."""

    def __init__(self, warm_up: tuple[str, ...] = ()) -> None:
        from multiprocessing.connection import Connection

        to_child, from_parent = os.pipe()[::-1]
        from_child, to_parent = os.pipe()
        level = logging.getLogger("edgeship").getEffectiveLevel()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "edgeship.apart", str(from_parent), str(to_parent), str(level), *warm_up],
            pass_fds=(from_parent, to_parent), stdin=subprocess.DEVNULL)
        os.close(from_parent)
        os.close(to_parent)
        self._out = Connection(to_child, readable=False)
        self._in = Connection(from_child, writable=False)

    def send(self, units: list[tuple[Callable, tuple]]) -> None:
        try:
            self._out.send(units)
        except OSError:
            raise self._ended() from None

    def result(self):
        """The next unit's return value; its exception is raised here. A worker that died (out of memory, a
        native abort) is an ExportError naming its exit code."""
        while not self._in.poll(0.5):
            if self._process.poll() is not None:
                raise self._ended()
        try:
            kind, value = self._in.recv()
        except EOFError:
            raise self._ended() from None
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Stops the process, whatever it is doing (its results are read, or no longer wanted)."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait()
        self._out.close()
        self._in.close()

    def _ended(self) -> ExportError:
        code = self._process.wait()
        return ExportError(f"the second lowering process ended with exit code {code} before it finished (out of "
                           "memory?); set EDGESHIP_LOWER_APART=0 to lower in this process")


def _serve(receive, reply, level: int, warm_up: list[str]) -> None:
    """The worker: imports `warm_up`, then runs each unit it is sent and sends back ("ok", value) or
    ("error", exception)."""
    import importlib
    import signal

    from edgeship import logs

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which stops this process
    logs.configure(level)
    for name in warm_up:
        importlib.import_module(name)
    logs.quiet_torch()
    while True:
        try:
            units = receive.recv()
        except EOFError:
            return
        for function, args in units:
            try:
                answer = ("ok", function(*args))
            except Exception as exc:  # sent back to be raised where the work was asked for
                answer = ("error", _portable(exc))
            reply.send(answer)


def _portable(exc: Exception) -> Exception:
    """`exc` itself where it survives pickling (an ExportError, an OSError with its errno), else an
    ExportError with its type and first line."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        return ExportError(f"{type(exc).__name__}: {first}")


if __name__ == "__main__":
    from multiprocessing.connection import Connection

    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False),
           int(sys.argv[3]), sys.argv[4:])
