"""Loops (`torch.ops.higher_order.scan`, edgeship/export/loops.py) converted to LiteRT's WHILE.

litert-torch has no lowering for the scan operator. Three pieces give it one:

- `_scan`: the operator lowered to `stablehlo.while` over (step, carries, stacked outputs, inputs); the
  body slices step t of each input, runs the scan body's graph through litert-torch's own lowering
  interpreter, and writes the step's outputs into the stacked ones. LiteRT's converter turns it into
  `tfl.while`, and the Q/DQ pairs inside into int8 kernels as it does for the top graph.
- `_outline`: the flatbuffer writer takes a `tfl.while` whose regions each call a function; the
  converter leaves them inline (TensorFlow's `tfl-while-loop-outline` pass is not in litert-torch's
  converter), so they are moved into functions here, the values they read from outside passed in.
- `_lists_in_bodies`: litert-torch reads per-channel scales as lists for the top graph only; a body's
  arrive as inputs of the loop and are read here from the top graph's inputs.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

SCAN = torch.ops.higher_order.scan
_PER_CHANNEL = ("quantize_per_channel.default", "dequantize_per_channel.default")
_registered = False


@contextlib.contextmanager
def loops_converted():
    """litert-torch converting scan operators while inside this block."""
    from litert_torch._convert import litert_converter
    from litert_torch.backend import export

    _register()
    lists, exporter = export._convert_q_dq_per_channel_args_to_list, litert_converter.LazyModelExporter.__init__

    def with_lists(program):
        _lists_in_bodies(program)
        lists(program)

    def outlined(self, module=None, content=None):
        if module is not None:
            _outline(module)
        exporter(self, module=module, content=content)

    export._convert_q_dq_per_channel_args_to_list = with_lists
    litert_converter.LazyModelExporter.__init__ = outlined
    try:
        yield
    finally:
        export._convert_q_dq_per_channel_args_to_list = lists
        litert_converter.LazyModelExporter.__init__ = exporter


def _register() -> None:
    global _registered
    if not _registered:
        from litert_torch.backend.lowerings import registry

        registry.global_registry.register(SCAN, _scan)
        _registered = True


def _scan(lctx, combine, init, xs, additional):
    from litert_converter.mlir import ir
    from litert_converter.mlir.dialects import stablehlo
    from litert_torch.backend.export import LoweringInterpreter
    from litert_torch.backend.lowerings import utils

    def i32(value):
        return stablehlo.constant(ir.DenseElementsAttr.get(np.array(value, dtype=np.int32)))

    init, xs, additional = list(init), list(xs), list(additional)
    steps = ir.RankedTensorType(xs[0].type).shape[0]
    stacked = lctx.node.meta["val"][len(init):]  # the outputs stacked over the steps
    zeros = [stablehlo.constant(ir.DenseElementsAttr.get(np.zeros(tuple(t.shape), dtype=_numpy(t.dtype))))
             for t in stacked]
    operands = [i32(0), *init, *zeros, *xs, *additional]
    types = [v.type for v in operands]
    loop = stablehlo.WhileOp(types, operands)
    cond = loop.cond.blocks.append(*types)
    with ir.InsertionPoint(cond):
        stablehlo.return_([stablehlo.compare(cond.arguments[0], i32(steps),
                                             stablehlo.ComparisonDirectionAttr.get("LT"))])
    body = loop.body.blocks.append(*types)
    with ir.InsertionPoint(body):
        args = list(body.arguments)
        step, zero = args[0], i32(0)  # constants made inside the body: its regions may not read outside
        carries = args[1:1 + len(init)]
        outputs = args[1 + len(init):1 + len(init) + len(zeros)]
        inputs = args[1 + len(init) + len(zeros):1 + len(init) + len(zeros) + len(xs)]
        rest = args[1 + len(init) + len(zeros) + len(xs):]
        sliced = []
        for x in inputs:
            kind = ir.RankedTensorType(x.type)
            shape = list(kind.shape)
            one = stablehlo.dynamic_slice(x, [step] + [zero] * (len(shape) - 1), [1] + shape[1:])
            sliced.append(stablehlo.reshape(ir.RankedTensorType.get(shape[1:], kind.element_type), one))
        interpreter = LoweringInterpreter(combine, lctx)
        interpreter.run(*carries, *sliced, *rest, enable_io_processing=False)
        results = interpreter.outputs
        written = []
        for out, y, fake in zip(outputs, results[len(init):], stacked):
            shape = [1] + list(fake.shape)[1:]
            y = stablehlo.reshape(ir.RankedTensorType.get(shape, utils.torch_dtype_to_ir_element_type(fake.dtype)), y)
            written.append(stablehlo.dynamic_update_slice(out, y, [step] + [zero] * (len(shape) - 1)))
        stablehlo.return_([stablehlo.add(step, i32(1)), *results[:len(init)], *written, *inputs, *rest])
    results = list(loop.results)
    return tuple(results[1:1 + len(init)] + results[1 + len(init):1 + len(init) + len(zeros)])


def _numpy(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype


def _lists_in_bodies(program: torch.export.ExportedProgram) -> None:
    from litert_torch.backend import _torch_future

    places = [n for n in program.graph.nodes if n.op == "placeholder"]
    values = dict(zip(places, _torch_future.graph_module_flat_inputs(program, *program.example_inputs)))
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target is not SCAN:
            continue
        combine, init, xs, additional = node.args
        body = getattr(program.graph_module, combine.target)
        inside = [n for n in body.graph.nodes if n.op == "placeholder"][len(init) + len(xs):]
        given = {place: values.get(arg) for place, arg in zip(inside, additional)}
        for op in body.graph.nodes:
            if getattr(op.target, "__name__", "") not in _PER_CHANNEL:
                continue
            scale, zero_point = given.get(op.args[1]), given.get(op.args[2])
            if scale is not None and zero_point is not None:
                op.args = (op.args[0], scale.detach().numpy().tolist(), zero_point.detach().numpy().tolist(),
                           *op.args[3:])


def _outline(module) -> None:
    from litert_converter.mlir import ir

    loops = []

    def find(op) -> None:
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    if inner.operation.name == "tfl.while":
                        loops.append(inner.operation)
                    find(inner.operation)

    find(module.operation)
    if not loops:
        return
    with module.context, ir.Location.unknown():
        for k, loop in enumerate(reversed(loops)):  # inner loops first
            _outline_one(module, loop, k)
        module.operation.verify()


def _inside(op, ancestor) -> bool:
    while op is not None:
        if op == ancestor:
            return True
        if op.name == "builtin.module":
            return False
        op = op.parent
    return False


def _read_from_outside(loop) -> list:
    from litert_converter.mlir import ir

    seen, found = set(), []

    def visit(op) -> None:
        for value in op.operands:
            owner = value.owner  # an operation, or the block of a block argument
            if not _inside(owner.owner if isinstance(owner, ir.Block) else owner, loop) and value not in seen:
                seen.add(value)
                found.append(value)
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    visit(inner.operation)

    for region in loop.regions:
        for block in region.blocks:
            for inner in block.operations:
                visit(inner.operation)
    return found


def _outline_one(module, loop, k: int) -> None:
    from litert_converter.mlir import ir
    from litert_converter.mlir.dialects import func

    outside = _read_from_outside(loop)
    count = len(loop.operands)
    types = [v.type for v in loop.operands] + [v.type for v in outside]
    names = []
    for index, region in enumerate(loop.regions):
        block = region.blocks[0]
        ops = list(block.operations)
        end = ops[-1]
        name = f"edgeship_while_{'cond' if index == 0 else 'body'}_{k}"
        results = [v.type for v in end.operands] + ([] if index == 0 else [v.type for v in outside])
        with ir.InsertionPoint.at_block_begin(module.body):
            function = func.FuncOp(name, ir.FunctionType.get(types, results))
            function.attributes["sym_visibility"] = ir.StringAttr.get("private")
        entry = function.add_entry_block()
        arguments = list(entry.arguments)
        for old, new in zip(block.arguments, arguments[:count]):
            old.replace_all_uses_with(new)
        with ir.InsertionPoint(entry):
            ret = func.ReturnOp(list(end.operands) + ([] if index == 0 else arguments[count:]))
        for op in ops[:-1]:
            op.operation.move_before(ret.operation)
        for value, new in zip(outside, arguments[count:]):
            for use in list(value.uses):
                if _inside(use.owner, function.operation):
                    use.owner.operands[use.operand_number] = new
        end.operation.erase()
        names.append((name, results))
    with ir.InsertionPoint(loop), loop.location:
        outlined = ir.Operation.create("tfl.while", results=types, operands=list(loop.operands) + outside,
                                       attributes={a: loop.attributes[a] for a in loop.attributes}, regions=2)
    for index, (name, results) in enumerate(names):
        block = outlined.regions[index].blocks.append(*types)
        with ir.InsertionPoint(block), loop.location:
            call = func.CallOp(results, ir.FlatSymbolRefAttr.get(name), list(block.arguments))
            ir.Operation.create("tfl.yield", operands=list(call.results))
    for i in range(len(loop.results)):
        loop.results[i].replace_all_uses_with(outlined.results[i])
    loop.erase()
