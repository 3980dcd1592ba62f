"""Passes on the quantized graph before it is lowered to ExecuTorch's XNNPACK delegate (the other runtimes
get the graph as it is).

`bias_per_call`: applies where one conv / linear bias is read by several calls (a recurrent layer's steps,
a cell in the model's own loop, tied weights); leaves every graph whose layers each read their own bias.
`int16_in_float`: applies where the recipe gave layers int16 activations (`int16_activations`); leaves
every graph without int16 quantize/dequantize pairs.
`prelu_in_4d`: applies to PReLU on 2-D and 3-D tensors (after linear and conv1d layers), float or int8
graph; leaves 4-D PReLU and every other op.
"""

from __future__ import annotations

import copy

import torch

from edgeship.quantize.graphs import attr, register
from edgeship.quantize.quantizer import CONV_OPS, LINEAR_OPS, STRUCTURAL_OPS, op_name


def bias_per_call(folded: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The graph with every conv / linear call that shares its float bias with another call (a recurrent
    layer's steps, a cell in the model's loop) reading its own copy; `folded` itself when none shares.

    XNNPACK's lowering quantizes a layer's bias to int32 at that call's input scale x weight scale but
    defines the tensor once per graph node: every later call reading the same bias got the first call's
    int32 values, off by the ratio of the input scales (two calls of one linear with input scales 0.005 and
    0.007: 5 output steps off; a GRUCell in a loop after an LSTMCell: 26 dB against 42 simulated). The
    copies hold the same float values, so nothing else changes."""
    if not _shared_biases(folded.graph):
        return folded
    module = copy.deepcopy(folded)
    for target, nodes in _shared_biases(module.graph).items():
        for k, node in enumerate(nodes[1:], 1):
            name = register(module, f"{target}_call{k}", attr(module, target).detach().clone())
            with module.graph.inserting_before(node):
                node.update_arg(2, module.graph.get_attr(name))
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def _shared_biases(graph: torch.fx.Graph) -> dict[str, list[torch.fx.Node]]:
    """Bias attribute -> the conv / linear calls reading it, where more than one does."""
    by_bias: dict[str, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        bias = node.args[2] if node.op == "call_function" and node.target in CONV_OPS | LINEAR_OPS \
            and len(node.args) > 2 else None
        if isinstance(bias, torch.fx.Node) and bias.op == "get_attr":
            by_bias.setdefault(bias.target, []).append(node)
    return {target: nodes for target, nodes in by_bias.items() if len(nodes) > 1}


def int16_in_float(folded: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[str]]:
    """The graph with its int16 quantize -> dequantize pairs taken out (the values they carried stay
    float), and the op names of the ops that read those values; `folded` itself when it has none. A layer
    left with a float input gets its int8 weight as the float values it stands for, so that XNNPACK runs it
    as a float layer (given a float input and a dequantized weight it leaves the layer to portable kernels)."""
    pairs = [n.name for n in folded.graph.nodes if _op(n) == "dequantize_per_tensor" and n.args[-1] is torch.int16
             and _op(n.args[0]) == "quantize_per_tensor"]
    if not pairs:
        return folded, []
    module = copy.deepcopy(folded)
    nodes = {n.name: n for n in module.graph.nodes}
    readers = set()
    for name in pairs:
        dq = nodes[name]
        q = dq.args[0]
        readers |= {u for u in dq.users if u.op == "call_function" and _op(u) not in _QDQ}
        dq.replace_all_uses_with(q.args[0])
        module.graph.erase_node(dq)
        if not q.users:
            module.graph.erase_node(q)
    replaced = set()
    for reader in readers:
        if reader.args and _op(reader.args[0]) not in _QDQ:  # its input is float now
            replaced |= _float_weights(module, reader)
    module.graph.eliminate_dead_code()
    read = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    for target in replaced - read:  # the int8 weights and scales no layer reads now: not stored
        owner, _, name = target.rpartition(".")
        delattr(module.get_submodule(owner) if owner else module, name)
    module.recompile()
    return module, sorted(_op(u) for u in readers if _op(u) not in STRUCTURAL_OPS)


_QDQ = ("quantize_per_tensor", "dequantize_per_tensor")


def _float_weights(module: torch.fx.GraphModule, layer: torch.fx.Node) -> set[str]:
    """Each constant weight `layer` reads through a dequantize becomes the dequantized float constant;
    returns the attributes those dequantizes read."""
    read = set()
    for arg in layer.args[1:]:
        if not (isinstance(arg, torch.fx.Node) and _op(arg).startswith("dequantize_per")):
            continue
        if not all(a.op == "get_attr" for a in arg.args if isinstance(a, torch.fx.Node)):
            continue
        values = [attr(module, a.target) if isinstance(a, torch.fx.Node) else a for a in arg.args]
        name = f"{arg.name}_float"
        module.register_buffer(name, arg.target(*values, **arg.kwargs))
        with module.graph.inserting_before(arg):
            layer.replace_input_with(arg, module.graph.get_attr(name))
        read |= {a.target for a in arg.args if isinstance(a, torch.fx.Node)}
    return read


def _op(value) -> str:
    return op_name(value) if isinstance(value, torch.fx.Node) else ""


def prelu_in_4d(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The graph with each PReLU on a 2-D or 3-D tensor computed on the tensor with trailing axes of size 1
    added (and removed after); `module` itself when it has none. XNNPACK's lowering tags PReLU as a
    channels-last op and its layout pass raised ("Attempting to convert non-NHWC compatible node to NHWC")
    on a PReLU after a conv1d (Conv-TasNet's blocks): no .pte at all, fp32 or int8. Same values: PReLU's
    weight is per axis 1."""
    aten = torch.ops.aten

    def low_rank(node: torch.fx.Node) -> int:
        if node.op != "call_function" or node.target is not aten.prelu.default:
            return 0
        val = node.meta.get("val")  # the output's shape is the input's (a dequantize before it may have none)
        return 4 - val.dim() if val is not None and val.dim() in (2, 3) else 0

    if not any(low_rank(n) for n in module.graph.nodes):
        return module
    module = copy.deepcopy(module)
    for node in list(module.graph.nodes):
        added = low_rank(node)
        if not added:
            continue
        with module.graph.inserting_before(node):
            x = node.args[0]
            for _ in range(added):
                x = module.graph.call_function(aten.unsqueeze.default, (x, -1))
        node.update_arg(0, x)
        with module.graph.inserting_after(node):
            squeezed = module.graph.call_function(aten.squeeze.dims, (node, list(range(-added, 0))))
        node.replace_all_uses_with(squeezed, delete_user_cb=lambda user: user is not squeezed)
    module.recompile()
    return module
