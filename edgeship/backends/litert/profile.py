"""LiteRT's profile: the Python interpreter exposes no per-op timings, so it lists the ops and which
compute in int8 (integer tensors), and how many delegate nodes XNNPACK took."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from edgeship.backends.litert.session import DATA_MOVEMENT, float_ops


def profile(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    plain = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    delegated = Interpreter(str(path))
    delegated.allocate_tensors()
    delegate_nodes = sum(op["op_name"] == "DELEGATE" for op in delegated._get_ops_details())
    counts: dict[str, int] = defaultdict(int)
    for op in plain._get_ops_details():
        counts[op["op_name"]] += 1
    in_float = set(float_ops(path))
    rows = [{"op": name, "ms_per_run": None, "share": None, "count": n,
             "int8": None if name in DATA_MOVEMENT else name not in in_float}
            for name, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return {"runtime": "litert", "timed": False, "ops": rows, "delegate_nodes": delegate_nodes,
            "note": "the LiteRT Python interpreter exposes no per-op timings or per-op delegation; "
                    "int8 marks ops whose tensors are integer"}
