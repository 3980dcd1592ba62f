"""One module per user-level flow (export, analyze, debug, bench, the build's project file): each is
orchestration only, calling the layers below it (export, quantize, backends' targets and runtimes,
verify, report). `edgeship.api` re-exports their entry points.

`Progress` is how a flow reports long work: `progress(task, total)` returns `advance(n)`."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)

Progress = Callable[[str, int], Callable[[int], None]]


def no_progress(task: str, total: int) -> Callable[[int], None]:
    log.info("%s (%d)", task, total)
    return lambda n: None
