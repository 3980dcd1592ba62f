"""Recurrent layers kept as loops: `torch.ops.higher_order.scan` over the time steps, its body one step.

A long sequence unrolled is thousands of nodes that every pass, quantizer and lowering walks; the loop is
one step's nodes whatever the length, and every runtime runs it natively (ONNX `Scan`, ExecuTorch's loop
instructions with the body delegated to XNNPACK, LiteRT's `WHILE`; see each backend's `loops.py`). What
the graph passes here take care of:

- Observers are modules with state, and the scan operator traces its body with fake tensors each call,
  so a prepared graph runs its loops as plain Python loops (`run_eagerly`); the observers of a body see
  every step and give the step one range. `as_loops` puts the operator back before conversion.
- `ExportedProgram.module()` shares the bodies with the program: `own_bodies` copies them before a
  pass changes them.
- Converted, a body quantizes its weight (an input of the loop) with scales it holds as attributes, which
  `torch.export` cannot trace; `hoist_weight_quant` hands the scales in as inputs of the loop too.
"""

from __future__ import annotations

import copy

import torch
from torch.fx import GraphModule, Node

SCAN = torch.ops.higher_order.scan
# the schemes whose every runtime lowers loops: static int8 (and its fp32 artifacts); the weight-only
# rewrites (int4, int8-dynamic) and fp16 read the top graph's matmuls only, so they get the steps unrolled
LOOP_SCHEMES = ("w8a8",)


def loop_scan(combine, init, xs, additional):
    """The scan operator's arguments, run as a Python loop on real tensors (the observers in the body
    see each step) and as the operator itself under tracing (the program keeps its loop)."""
    from torch._higher_order_ops.scan import generic_scan

    if _tracing([*init, *xs, *additional]):
        return SCAN(combine, init, xs, additional)
    return generic_scan(combine, list(init), list(xs), additional_inputs=tuple(additional))


def _tracing(tensors: list) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return get_proxy_mode() is not None or any(isinstance(t, (FakeTensor, FunctionalTensor)) for t in tensors)


def is_loop(node: Node) -> bool:
    return node.op == "call_function" and node.target in (SCAN, loop_scan)


def has_loops(module: GraphModule) -> bool:
    return any(is_loop(n) for n in module.graph.nodes)


def bodies(module: GraphModule) -> list[tuple[Node, GraphModule]]:
    """Each loop node of `module` (not of its bodies) and its body."""
    return [(n, getattr(module, n.args[0].target)) for n in module.graph.nodes if is_loop(n)]


def graphs(module: GraphModule) -> list[GraphModule]:
    """`module` and the bodies of its loops, nested ones too."""
    return [module] + [g for _, body in bodies(module) for g in graphs(body)]


def run_eagerly(module: GraphModule) -> GraphModule:
    return _set_loops(module, loop_scan)


def as_loops(module: GraphModule) -> GraphModule:
    return _set_loops(module, SCAN)


def _set_loops(module: GraphModule, target) -> GraphModule:
    changed = False
    for node, body in bodies(module):
        node.target = target
        _set_loops(body, target)
        changed = True
    if changed:
        module.recompile()
    return module


def own_bodies(module: GraphModule) -> GraphModule:
    for node, body in bodies(module):
        setattr(module, node.args[0].target, copy.deepcopy(body))
    return module


def hoist_weight_quant(module: GraphModule, fold: bool) -> int:
    """Every body's per-channel quantize of a weight the loop receives reads its scales and zero points
    from inputs of the loop (attributes of the top graph) instead of attributes of the body. `fold`: the
    quantize is done here, once, and the loop receives the int8 weight (what `convert_pt2e`'s folding does
    for the top graph), the float weight leaving the module. Returns how many weights were moved."""
    moved, folded = 0, []
    for node, body in bodies(module):
        combine, init, xs, additional = node.args
        places = [n for n in body.graph.nodes if n.op == "placeholder"]
        first = len(init) + len(xs)
        additional = list(additional)
        last = places[-1]
        for k, place in enumerate(places[first:]):
            for quantize in [u for u in place.users if _quantizes_per_channel(u)]:
                _, scale, zero_point = quantize.args[:3]
                if not (isinstance(scale, Node) and scale.op == "get_attr" and zero_point.op == "get_attr"):
                    continue
                inputs = []
                for attr, kind in ((scale, "scale"), (zero_point, "zero_point")):
                    name = f"_loop_{combine.target}_{k}_{moved}_{kind}"
                    module.register_buffer(name, _attr(body, attr.target).clone())
                    with module.graph.inserting_before(node):
                        additional.append(module.graph.get_attr(name))
                    with body.graph.inserting_after(last):
                        last = body.graph.placeholder(f"{place.name}_{kind}")
                    last.meta["val"] = _like(place, _attr(body, attr.target))
                    inputs.append(last)
                users = [u for u in quantize.users if u.args[1:3] == (scale, zero_point)]
                if fold and isinstance(additional[k], Node) and additional[k].op == "get_attr":
                    folded.append(additional[k].target)
                    _fold(module, node, body, additional, k, place, quantize, users, inputs)
                else:
                    for user in [quantize, *users]:
                        user.args = (user.args[0], *inputs, *user.args[3:])
                for attr in (scale, zero_point):
                    if not attr.users:
                        body.graph.erase_node(attr)
                moved += 1
        node.args = (combine, init, xs, tuple(additional))
        _placeholders_first(body)
        body.graph.lint()
        body.recompile()
    if moved:
        module.graph.eliminate_dead_code()
        _drop_unread(module, folded)
        module.graph.lint()
        module.recompile()
    return moved


def _fold(module, node, body, additional, k, place, quantize, users, inputs) -> None:
    """The loop's k-th additional input, a float weight, replaced by its int8 values (computed as the
    body's quantize computes them); the body dequantizes it."""
    weight = additional[k]
    scale, zero_point = (_attr(body, a.target) for a in quantize.args[1:3])
    int8 = quantize.target(_attr(module, weight.target).detach(), scale, zero_point, *quantize.args[3:])
    name = f"_loop_{node.args[0].target}_{k}_int8"
    module.register_buffer(name, int8)
    with module.graph.inserting_before(node):
        additional[k] = module.graph.get_attr(name)
    place.meta["val"] = _like(place, int8)
    for user in users:
        user.args = (place, *inputs, *user.args[3:])
    body.graph.erase_node(quantize)


def _drop_unread(module: GraphModule, targets: list[str]) -> None:
    """The float weights folded to int8, where the graph reads them no more."""
    read = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    for target in set(targets) - read:
        owner, _, attr = target.rpartition(".")
        delattr(module.get_submodule(owner) if owner else module, attr)


def _placeholders_first(body: GraphModule) -> None:
    """The graph's placeholders, in their order, before its other nodes (a body's are interleaved with
    them, and the new ones came last)."""
    first = next(n for n in body.graph.nodes if n.op != "placeholder")
    for place in [n for n in body.graph.nodes if n.op == "placeholder"]:
        first.prepend(place)


def _quantizes_per_channel(node: Node) -> bool:
    return node.op == "call_function" and getattr(node.target, "__name__", "") == "quantize_per_channel.default"


def _like(place: Node, value: torch.Tensor):
    fake = place.meta.get("val")
    mode = getattr(fake, "fake_mode", None)
    if mode is None:
        return value
    with mode:
        return torch.empty(value.shape, dtype=value.dtype)


def _attr(module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module
