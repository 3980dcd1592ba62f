"""Logging set-up for the processes edgeship starts itself: the CLI, and `edgeship build`'s workers.
The library modules only log; upstream libraries' banners and warnings (which say nothing about the
user's model) are silenced here, unless the user asked for debug output."""

from __future__ import annotations

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
