"""The steps every flow that starts from a model takes: read its data and bind it to the forward's
parameters, then capture it (with its recurrent layers unrolled) for quantization."""

from __future__ import annotations

import logging

from edgeship.errors import CalibrationError, ExportError

log = logging.getLogger(__name__)


def load_inputs(model, calibration, eval_data, input_shapes, input_dtypes, preprocess):
    from edgeship.calibration.readers import read_samples
    from edgeship.calibration.samples import split_held_out
    from edgeship.export import inputs as model_inputs
    from edgeship.export.load import load_model

    loaded = load_model(model)
    signature = loaded.signature
    specs = (model_inputs.specs_from_flags(input_shapes, input_dtypes or [], signature.positional)
             if input_shapes else None)
    calib = model_inputs.bind(read_samples(calibration, overrides=preprocess), signature, specs)
    if eval_data is not None:
        evaluation = model_inputs.bind(read_samples(eval_data, overrides=preprocess), signature, specs)
        if evaluation.names != calib.names:
            raise CalibrationError(
                f"{evaluation.source} gives the inputs {', '.join(evaluation.names)} but {calib.source} gives "
                f"{', '.join(calib.names)}; give the calibration and eval data the same arrays")
    else:
        calib, evaluation = split_held_out(calib)
    loaded = loaded.with_inputs(calib.names)
    return loaded, calib, evaluation


def capture(loaded, calib, loops: bool = True):
    """Example inputs (the first calibration sample), the model with flat tuple outputs, checked on
    them, and its torch.export program. `loops`: recurrent layers over long sequences kept as loops
    (export/loops.py; the static int8 and float forms lower them), else unrolled (the weight-only forms'
    rewrites find the matmuls of the top graph only)."""
    from edgeship.export import capture as cap
    from edgeship.export.inputs import example_inputs
    from edgeship.export.recurrent import unroll_recurrent

    args = example_inputs(calib)
    cap.check_outputs(cap.run_float(loaded.module, args, loaded.source_file))
    flat = cap.FlatOutputs(loaded.module).eval()
    flat, _ = unroll_recurrent(flat, args, loops)
    return args, flat, cap.capture(flat, args, loaded.source_file)


def capture_native(loaded, args, flat):
    """The program of the model with its recurrent layers as written, when `capture` unrolled them
    (for the float ONNX); else None. A model torch.export cannot capture that way gets None too."""
    from edgeship.export import capture as cap
    from edgeship.export.recurrent import Unrolled

    if not any(isinstance(m, Unrolled) for m in flat.modules()):
        return None
    try:
        return cap.capture(cap.FlatOutputs(loaded.module).eval(), args, loaded.source_file)
    except ExportError as exc:
        log.info("the float ONNX gets the unrolled recurrent layers: %s", exc)
        return None
