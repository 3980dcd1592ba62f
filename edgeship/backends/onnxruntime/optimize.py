"""The ONNX exporter's graph optimization, less the one rewrite rule whose cost is quadratic.

`torch.onnx.export(optimize=True)` runs onnxscript's `optimize_ir`: constant folding, its default
rewrite rules, removal of unused nodes, initializers lifted and de-duplicated, common subexpressions
merged. One of those rules, `SlicesSplit`, looks at every pair of Slices that read the same tensor
for two that cut its last axis in halves (to write one Split). An unrolled recurrent layer
(export/recurrent.py) slices its projected sequence once per step, so that pairing grows with the
square of the steps (one LSTM: 24 s at 100 steps, 77 s at 200, 40 s of them in that rule).
`optimize` runs the same passes in the same order without it.

It applies to every ONNX model edgeship writes, and gives the graph the exporter's optimization gives:
the rule's pattern is a Slice with four inputs, and torch.onnx writes every Slice with five (its steps),
so on an exported graph the rule matches nothing (tests/test_onnx_optimize.py compares the two).
onnxscript is pinned (pyproject.toml), so its private pass list and rules are read from it directly.
"""

from __future__ import annotations


def optimize(model) -> None:
    """Optimize an `onnx_ir.Model` in place (what `ONNXProgram.optimize()` does, less `SlicesSplit`)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding as folding
    from onnxscript.rewriter.rules.common import _basic_rules

    rules = [rule for rule in rewriter._DEFAULT_REWRITE_RULES if rule is not _basic_rules.slice_split_rule]
    fold = folding.FoldConstantsPass(shape_inference=True,
                                     input_size_limit=folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                                     output_size_limit=folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT)
    repeated = ir.passes.PassManager([fold, rewriter.RewritePass(rules), common.RemoveUnusedNodesPass(),
                                      common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()],
                                     steps=2, early_stop=True)
    ir.passes.Sequential(
        common.InlinePass(), repeated, common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(), common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(), common.OutputFixPass(), common.NameFixPass(),
    )(model)
