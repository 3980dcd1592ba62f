"""One package per runtime, each holding everything that runtime needs: lowering the one quantized graph
to its file format (`lower.py`), its graph rewrites and weight forms, opening and running a session with
the right settings (`session.py`), and its per-op profile (`profile.py`). `BACKENDS` is the one list of
runtime names the rest of edgeship reads; a fourth runtime is a fourth package registered here."""

from __future__ import annotations

from edgeship.registry import instantiate

BACKENDS = {
    "onnxruntime": "edgeship.backends.onnxruntime:OnnxRuntimeBackend",
    "executorch": "edgeship.backends.executorch:ExecuTorchBackend",
    "litert": "edgeship.backends.litert:LiteRTBackend",
}
RUNTIMES = tuple(BACKENDS)


def get_backend(name: str):
    """The backend registered under `name` (an `edgeship.backends.base.Backend`); an unknown name is an
    error listing the known ones. Imports the runtime's package only here."""
    return instantiate(BACKENDS, "runtime", name)
