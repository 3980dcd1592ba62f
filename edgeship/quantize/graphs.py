"""Helpers the post-training passes share: module attributes by dotted name, eval-mode dropout
removed, and recording interpreters run over the calibration samples."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.fx import GraphModule, Interpreter, Node
from torchao.quantization.pt2e.observer import ObserverBase

from edgeship.calibration.samples import Samples
from edgeship.export.fx import CONV_OPS, LINEAR_OPS, attr, register, replace_attr  # noqa: F401  (re-exported)
from edgeship.export.inputs import to_torch


class Watcher(Interpreter):
    """Runs the graph and hands each watched node and its output to `record` (the node's inputs are
    still in `self.env` then): what every pass that collects statistics over the samples builds on.
    `float_observers` (for a prepared graph): observers return their input and see nothing, so the
    values are the float ones and calibration's statistics stay as they were."""

    float_observers = False

    def __init__(self, module: GraphModule, watch: set[str]) -> None:
        super().__init__(module)
        self.watch = watch

    def run_node(self, n: Node):
        if self.float_observers and n.op == "call_module" and isinstance(self.module.get_submodule(n.target),
                                                                          ObserverBase):
            return self.env[n.args[0]]
        out = super().run_node(n)
        if n.name in self.watch:
            self.record(n, out)
        return out

    def record(self, node: Node, out) -> None:
        raise NotImplementedError


class ChannelMax(Watcher):
    """Keeps, for each watched node, the max |value| per last-axis channel, and (when `keep` > 0) up to
    `keep` rows of its values for fitting."""

    def __init__(self, module: GraphModule, watch: set[str], keep: int = 0) -> None:
        super().__init__(module, watch)
        self.keep, self.amax, self.rows = keep, {}, {}

    def record(self, node: Node, out) -> None:
        flat = out.detach().reshape(-1, out.shape[-1]).float()
        v = flat.abs().amax(dim=0)
        self.amax[node.name] = torch.maximum(self.amax[node.name], v) if node.name in self.amax else v
        kept = self.rows.setdefault(node.name, [])
        have = sum(len(r) for r in kept)
        if have < self.keep:
            kept.append(flat[: self.keep - have].clone())


def observed_weights(prepared: GraphModule, ops: set) -> list[tuple[Node, ObserverBase, str]]:
    """(layer, its weight observer, weight attribute) for each `ops` node of a prepared graph whose weight
    is a constant behind an observer (what the quantizer gave int8 weights)."""
    found = []
    for node in prepared.graph.nodes:
        if node.op != "call_function" or node.target not in ops or len(node.args) < 2:
            continue
        observed = node.args[1]
        if not (isinstance(observed, Node) and observed.op == "call_module"):
            continue
        observer, weight = prepared.get_submodule(observed.target), observed.args[0]
        if isinstance(observer, ObserverBase) and isinstance(weight, Node) and weight.op == "get_attr":
            found.append((node, observer, weight.target))
    return found


def weight_source(node: Node) -> Node | None:
    """The `get_attr` node of a conv / linear call's weight (behind its observer, if any), or None
    when the weight is computed."""
    weight = node.args[1] if len(node.args) > 1 else None
    while isinstance(weight, Node) and weight.op == "call_module":  # behind its observer
        weight = weight.args[0]
    return weight if isinstance(weight, Node) and weight.op == "get_attr" else None


def shared_weights(module: GraphModule) -> set[str]:
    """Weight attributes read by more than one layer call (a recurrent layer unrolled over time, weight
    tying): passes that rewrite one layer's weight leave these alone, so the artifact keeps one copy."""
    reads = Counter()
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target in CONV_OPS | LINEAR_OPS:
            weight = weight_source(node)
            if weight is not None:
                reads[weight.target] += 1
    return {target for target, count in reads.items() if count > 1}


# tensors made from another one's shape and dtype only: constants under static shapes (a recurrent
# layer's zero initial state written `x.new_zeros(layers, batch, hidden)`)
SHAPE_FACTORIES = {torch.ops.aten.new_zeros.default: 0.0, torch.ops.aten.zeros_like.default: 0.0,
                   torch.ops.aten.new_ones.default: 1.0, torch.ops.aten.ones_like.default: 1.0}


def _made_from_shape(node: Node) -> bool:
    """A SHAPE_FACTORIES call whose shape and dtype the export recorded (its value needs nothing else)."""
    return node.target in SHAPE_FACTORIES and "val" in node.meta


def fold_constant_layers(module: GraphModule) -> int:
    """Each conv / linear layer computed from constants only (a recurrent layer's first step from a learned
    or zero initial state) replaced by its value, a buffer: such a layer is a constant, and quantized it got
    wrong outputs from ExecuTorch (a GRU with a learned h0: 13 dB against 38 dB in the other runtimes; a GRU
    from `x.new_zeros(...)`: 5.3 dB against 22.2 simulated). Returns how many were folded."""
    varying: set[Node] = set()
    for node in module.graph.nodes:
        if node.op == "placeholder" or (not _made_from_shape(node) and
                                        any(a in varying for a in node.all_input_nodes)):
            varying.add(node)
    layers = [n for n in module.graph.nodes if n.op == "call_function" and n.target in CONV_OPS | LINEAR_OPS
              and n not in varying]
    if not layers:
        return 0
    values: dict[Node, object] = {}
    with torch.no_grad():
        for node in module.graph.nodes:
            if node in varying or node.op not in ("get_attr", "call_function"):
                continue
            if node.op == "get_attr":
                values[node] = attr(module, node.target)
                continue
            if _made_from_shape(node):
                val = node.meta["val"]
                values[node] = torch.full(tuple(val.shape), SHAPE_FACTORIES[node.target], dtype=val.dtype)
                continue
            args = torch.fx.node.map_arg(node.args, lambda a: values[a])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda a: values[a])
            values[node] = node.target(*args, **kwargs)
    for node in layers:
        name = register(module, f"_folded_{node.name}", values[node].detach().clone())
        with module.graph.inserting_before(node):
            constant = module.graph.get_attr(name)
        constant.meta = dict(node.meta)
        node.replace_all_uses_with(constant)
        module.graph.erase_node(node)
    module.graph.eliminate_dead_code()
    module.recompile()
    return len(layers)


def run_samples(recorder: Interpreter, samples: Samples, progress: Callable[[int], None] | None = None) -> None:
    """Runs a recording interpreter over every sample, without gradients."""
    with torch.no_grad():
        for i in range(len(samples)):
            recorder.run(*to_torch(samples.sample(i)))
            if progress is not None:
                progress(1)


aten = torch.ops.aten
_DROPOUTS = {aten.dropout.default, aten.dropout_.default, aten.feature_dropout.default, aten.feature_dropout_.default,
             aten.alpha_dropout.default, aten.alpha_dropout_.default, aten.feature_alpha_dropout.default,
             aten.feature_alpha_dropout_.default}


def remove_eval_dropout(module: GraphModule) -> int:
    """Dropout in eval mode (train=False) is the identity; it is removed so that it hides no layer from
    the passes and leaves no float op between int8 ones. (nn.Dropout(inplace=True), as in torchvision's
    EfficientNet and MobileNetV3 classifiers, exports as aten.dropout_; left in, SmoothQuant saw a float
    input there and inserted a float multiply that LiteRT's converter then quantized.) Returns the count."""
    removed = 0
    for node in list(module.graph.nodes):
        if node.op == "call_function" and node.target in _DROPOUTS and len(node.args) > 2 and node.args[2] is False:
            node.replace_all_uses_with(node.args[0])
            module.graph.erase_node(node)
            removed += 1
    if removed:
        module.recompile()
    return removed


def constant_matmuls_as_linear(module: GraphModule) -> int:
    """`addmm(bias, x, W)`, `mm(x, W)` and `matmul(x, W)` with a constant 2-D `W` (and bias) rewritten as
    `linear(x, W^T, bias)`, which the quantizer gives int8 weights per output channel. GPT-2's layers are
    Hugging Face `Conv1D`, an addmm with a weight stored (in, out): left as addmm, none of them was
    quantized (the int8 artifacts were the float model). A weight read by several calls gets one
    transposed copy. Returns how many calls were rewritten."""
    rewritten = 0
    transposed: dict[str, str] = {}
    for node in list(module.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.addmm.default and len(node.args) == 3 and all(node.kwargs.get(k, 1) == 1 for k in ("alpha", "beta")):
            bias, x, weight = node.args
        elif node.target in (aten.mm.default, aten.matmul.default) and len(node.args) == 2 and not node.kwargs:
            bias, (x, weight) = None, node.args
        else:
            continue
        constant = [a for a in (weight, bias) if a is not None]
        if not all(isinstance(a, Node) and a.op == "get_attr" for a in constant):
            continue
        w = attr(module, weight.target)
        if w.dim() != 2 or (bias is not None and tuple(attr(module, bias.target).shape) != (w.shape[1],)):
            continue
        if weight.target not in transposed:
            transposed[weight.target] = register(module, f"{weight.target}_transposed", w.detach().t().contiguous())
        with module.graph.inserting_before(node):
            weight_t = module.graph.get_attr(transposed[weight.target])
            linear = module.graph.call_function(aten.linear.default, (x, weight_t) + ((bias,) if bias is not None else ()))
        weight_t.meta["val"] = attr(module, transposed[weight.target])
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        module.graph.erase_node(node)
        rewritten += 1
    if rewritten:
        module.graph.eliminate_dead_code()
        used = {n.target for n in module.graph.nodes if n.op == "get_attr"}
        for target in transposed:  # the (in, out) weights no call reads any more
            if target not in used:
                *path, leaf = target.split(".")
                delattr(module.get_submodule(".".join(path)), leaf)
        module.recompile()
    return rewritten


def whole_window_pools_as_global(module: GraphModule) -> int:
    """`avg_pool2d` whose one window covers the whole input (kernel at least the input's height and width,
    no padding, one output position) rewritten as `adaptive_avg_pool2d(x, 1)`: the same mean, and the form
    every runtime has an int8 kernel for. Hugging Face EfficientNet pools with `AvgPool2d(1280,
    ceil_mode=True)`: its int8 average pool gave all-zero outputs in ONNX Runtime and LiteRT (the float
    ones and ExecuTorch's int8 were right). Returns how many were rewritten."""
    rewritten = 0
    for node in list(module.graph.nodes):
        if node.op != "call_function" or node.target is not aten.avg_pool2d.default:
            continue
        x, kernel = node.args[0], node.args[1]
        val, out = (x.meta.get("val") if isinstance(x, Node) else None), node.meta.get("val")
        if val is None or out is None or val.dim() != 4 or tuple(out.shape[-2:]) != (1, 1):
            continue
        kernel = list(kernel) * (2 // len(kernel)) if isinstance(kernel, (list, tuple)) else [kernel, kernel]
        padding = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
        override = node.args[6] if len(node.args) > 6 else node.kwargs.get("divisor_override")
        if any(padding if isinstance(padding, (list, tuple)) else [padding]) or override is not None \
                or kernel[0] < val.shape[-2] or kernel[1] < val.shape[-1]:
            continue
        with module.graph.inserting_before(node):
            pooled = module.graph.call_function(aten.adaptive_avg_pool2d.default, (x, [1, 1]))
        pooled.meta = dict(node.meta)
        node.replace_all_uses_with(pooled)
        module.graph.erase_node(node)
        rewritten += 1
    if rewritten:
        module.recompile()
    return rewritten


_LOGS = {aten.log.default, aten.log2.default, aten.log10.default, aten.log1p.default}
_PASS_THROUGH = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.clamp.default,
                 aten.clamp_min.default, aten.abs.default, aten.view.default, aten.reshape.default,
                 aten.transpose.int, aten.permute.default, aten.squeeze.dim, aten.unsqueeze.default,
                 aten.flatten.using_ints, aten.slice.Tensor, aten.contiguous.default, aten.clone.default}


def outputs_read_by_log(module: GraphModule) -> list[dict]:
    """The quantizable ops whose output reaches a logarithm through reshapes and arithmetic with constants
    only (`log(mel @ power + eps)`, `log(x.clamp(min=1e-5))`): each as {"layer", "log"}. They stay float.

    A per-tensor int8 range spans the largest value; a log-mel front-end's energies span 60 dB and more,
    so the quiet bands round to a few steps or to zero, and the log turns that into errors as large as
    the features (a waveform -> stft -> mel -> log -> GRU classifier: 13.8 dB simulated with its mel
    matmul int8, 41.6 dB with it float and everything else int8)."""
    found = []
    for log_node in (n for n in module.graph.nodes if n.op == "call_function" and n.target in _LOGS):
        node = log_node.args[0]
        while isinstance(node, Node) and node.op == "call_function" and node.target in _PASS_THROUGH:
            tensors = [a for a in node.args if isinstance(a, Node) and a.op != "get_attr"]
            if len(tensors) != 1:
                break  # two activations (re * re + im * im): that op is the producer
            node = tensors[0]
        if isinstance(node, Node) and node.op == "call_function" and node.target not in _LOGS:
            found.append({"layer": node.name, "log": log_node.name})
    return found
