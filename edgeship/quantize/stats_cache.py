"""Calibration statistics kept beside a model's exports, so that exporting it again (for another
target, or with another recipe that shares them) does not read the calibration samples again.

One file per key, `<out>/<model>/.calibration/<key>.pt`, saved with torch.save and loaded with
`weights_only=True` (tensors, numbers, strings, lists and dicts only). It holds:
- `passes`: what each sample-reading post-training algorithm decided (the outlier channels it split,
  the SmoothQuant scales it chose), replayed on the same graph;
- `observers`: every observer's state after calibration, per observer family: the 2048-bin histogram
  that methods `histogram`, `mse` and `percentile` all read (so those recipes share it), entropy's
  8192-bin histogram, min/max;
- `gptq`: the int4 values and scales GPTQ chose (int8 GPTQ values are under `passes`); for a causal
  language model (`for_language`), its int4 layers with their offsets, the values two to a byte.

The key hashes everything that decides them: the edgeship and torch versions, the captured graph and
its weights, the calibration samples, and the recipe's scheme, algorithms, group size and float layers.
A change to any of them gives another key, and nothing is reused across keys. A file that cannot be
read is ignored (and replaced), never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)
FOLDER = ".calibration"
# observer family per activation method: methods in one family keep the same statistics
FAMILIES = {"auto": "histogram-2048", "histogram": "histogram-2048", "mse": "histogram-2048", "percentile": "histogram-2048",
            "entropy": "histogram-8192", "minmax": "minmax"}


def program_hash(program: torch.export.ExportedProgram) -> str:
    tensors = {**program.state_dict, **{f"const:{k}": v for k, v in program.constants.items()}}
    return tensors_hash(tensors, hashlib.sha256(program.graph_module.code.encode()))


def tensors_hash(tensors: dict, digest=None) -> str:
    """sha256 over each name, and each tensor's dtype, shape and bytes, in name order."""
    digest = digest or hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(str((value.dtype, tuple(value.shape))).encode())
            digest.update(value.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                          if value.numel() else b"")
    return digest.hexdigest()


class StatsCache:
    """The statistics of one (graph, samples, recipe) key: `memo` is what the passes read and fill."""

    def __init__(self, folder: Path, key: str) -> None:
        self.path = folder / FOLDER / f"{key}.pt"
        self.memo: dict = self._load()
        self.reused = sorted(k for k in self.memo if self.memo[k])

    @classmethod
    def for_export(cls, folder: Path, program, samples, recipe, keep_float: frozenset[str] = frozenset()) -> StatsCache:
        import edgeship

        fields = {"edgeship": edgeship.__version__, "torch": torch.__version__, "program": program_hash(program),
                  "samples": samples.content_hash(), "scheme": recipe.scheme, "algorithms": list(recipe.algorithms),
                  "group_size": recipe.group_size, "weight_granularity": recipe.weight_granularity,
                  "keep_float": sorted(recipe.keep_float), "keep_int8": sorted(recipe.keep_int8),
                  "int16_activations": sorted(recipe.int16_activations), "float_layers": sorted(keep_float)}
        return cls(folder, hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32])

    @classmethod
    def for_language(cls, folder: Path, model: torch.nn.Module, windows: torch.Tensor, recipe) -> StatsCache:
        """A causal LM's GPTQ weights: keyed by its configuration and weights, the calibration windows (token
        ids) and the recipe's bits, group and offsets."""
        import edgeship

        fields = {"edgeship": edgeship.__version__, "torch": torch.__version__, "kind": "language",
                  "config": model.config.to_json_string(use_diff=False), "model": tensors_hash(model.state_dict()),
                  "windows": tensors_hash({"windows": windows}), "bits": recipe.bits, "group": recipe.group,
                  "asymmetric": recipe.asymmetric, "offsets": recipe.offsets}
        return cls(folder, hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32])

    def _load(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            memo = torch.load(self.path, weights_only=True)
        except Exception as exc:  # a truncated or foreign file: recompute and replace it
            log.warning("ignoring unreadable calibration statistics %s (%s)", self.path, exc)
            return {}
        return memo if isinstance(memo, dict) else {}

    def save(self) -> None:
        """Written to a temporary file and renamed into place: a reader never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(self.memo, buffer)
        handle, tmp = tempfile.mkstemp(prefix=".stats-", dir=self.path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(buffer.getvalue())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def record(self) -> dict:
        """For the manifest: where the statistics are and which parts this export reused."""
        return {"file": str(self.path), "reused": self.reused}


STATISTICS = ("min_val", "max_val", "histogram")  # an observer's state; its settings come from the recipe


def observer_states(prepared: torch.nn.Module) -> dict:
    from torchao.quantization.pt2e.observer import ObserverBase

    return {name: {k: getattr(module, k).detach().clone() for k in STATISTICS if hasattr(module, k)}
            for name, module in prepared.named_modules() if isinstance(module, ObserverBase)}


def load_observer_states(prepared: torch.nn.Module, states: dict) -> bool:
    """Loads every observer's saved state; False (nothing loaded) when the observers do not match."""
    from torchao.quantization.pt2e.observer import ObserverBase

    observers = {name: m for name, m in prepared.named_modules() if isinstance(m, ObserverBase)}
    if set(observers) != set(states):
        log.warning("cached calibration statistics do not match this graph's observers; calibrating again")
        return False
    for name, module in observers.items():
        if set(states[name]) != {k for k in STATISTICS if hasattr(module, k)}:
            log.warning("cached calibration statistics do not match observer %s; calibrating again", name)
            return False
    for name, module in observers.items():
        for key, value in states[name].items():
            buffer = getattr(module, key)
            buffer.resize_(value.shape)
            buffer.copy_(value)
    return True
