"""The .ort file is the same bytes whoever writes it: from any output folder, checkout path (interpreter
path), TMPDIR or calling process. ONNX Runtime's writer orders initializers by address-seeded hash tables."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeship.backends.onnxruntime.lower import _save_ort_format

WRITE = """
import sys
from pathlib import Path
from edgeship.backends.onnxruntime.lower import _save_ort_format
_save_ort_format(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def _qdq_convs(path: Path, count: int = 12) -> None:
    """A chain of int8 Q/DQ convolutions, as edgeship's int8 .onnx has them: ONNX Runtime fuses each into a
    QLinearConv when it writes the .ort file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(array, name))
        return name

    scale, zero = const("s", np.array(0.05, np.float32)), const("z", np.array(0, np.int8))
    prev = "x"
    for i in range(count):
        w = const(f"w{i}", rng.integers(-127, 128, (8, 8, 3, 3)).astype(np.int8))
        ws = const(f"ws{i}", (rng.random(8) * 0.01 + 0.001).astype(np.float32))
        wz = const(f"wz{i}", np.zeros(8, np.int8))
        b = const(f"b{i}", rng.standard_normal(8).astype(np.float32))
        nodes += [helper.make_node("QuantizeLinear", [prev, scale, zero], [f"q{i}"]),
                  helper.make_node("DequantizeLinear", [f"q{i}", scale, zero], [f"d{i}"]),
                  helper.make_node("DequantizeLinear", [w, ws, wz], [f"wd{i}"], axis=0),
                  helper.make_node("Conv", [f"d{i}", f"wd{i}", b], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"h{i}"])]
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ort_bytes_do_not_depend_on_folders_interpreter_path_or_tmpdir(tmp_path) -> None:
    source = tmp_path / "model.onnx"
    _qdq_convs(source)
    here = tmp_path / "out" / "a"
    here.mkdir(parents=True)
    _save_ort_format(source, here / "model.ort")
    # another process, as from another checkout: the interpreter through a longer path, another TMPDIR
    venv = tmp_path / "another" / "checkout" / "folder" / "venv"
    venv.parent.mkdir(parents=True)
    venv.symlink_to(Path(sys.prefix))
    link = venv / "bin" / Path(sys.executable).name
    longer_tmp = tmp_path / "a-much-longer-temporary-folder-name"
    longer_tmp.mkdir()
    there = tmp_path / "out2-with-a-longer-name" / "b"
    there.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(longer_tmp), "EXTRA": "x" * 5000}
    subprocess.run([str(link), "-c", WRITE, str(source), str(there / "model.ort")], env=env, check=True,
                   capture_output=True)
    assert _sha(here / "model.ort") == _sha(there / "model.ort")
