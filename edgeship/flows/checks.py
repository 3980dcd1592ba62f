"""What an export checks about each artifact after running it: that its runtime could load and run it,
that its outputs are finite, and the flags a user must see (an fp32 file that is not the model, an int8
file that is not the simulated graph, a quantized file slower than float)."""

from __future__ import annotations

import logging
import platform
from typing import Callable

from edgeship import outputs
from edgeship.errors import EdgeshipError
from edgeship.runtimes.runner import cpu_flags

log = logging.getLogger(__name__)


def check_each(artifacts: list, not_produced: list[dict], check: Callable) -> list:
    """Each artifact run in its runtime. One that its runtime cannot load or run is not shipped: its file
    is removed and `not_produced` says why; the others are still verified (ExecuTorch refused to load a
    Hugging Face BiT's int8 .pte, and its `execute` failed on RWKV's: the whole export failed)."""
    from edgeship.export.capture import first_line

    checked = []
    for artifact in artifacts:
        try:
            checked.append(check(artifact))
        except Exception as exc:  # each runtime raises its own types (ExecuTorch: RuntimeError from execute)
            if outputs.out_of_space(exc, artifact.path.parent, 0):  # a file cut short by a full disk
                raise
            artifact.path.unlink(missing_ok=True)
            reason = (str(exc) if isinstance(exc, EdgeshipError) else
                      f"{artifact.runtime} cannot run it on the eval samples: {type(exc).__name__}: {first_line(exc)}")
            not_produced.append({"runtime": artifact.runtime, "precision": artifact.precision,
                                 "path": artifact.path.name, "reason": f"{reason}; not shipped"})
            log.warning("%s: %s; not shipped", artifact.path.name, reason)
    return checked


def drop_non_finite(checked: list, not_produced: list[dict]) -> list:
    """An artifact whose outputs hold NaN or inf on the eval samples is not shipped: its file is removed
    and `not_produced` says why (the float model's outputs on the same samples are finite)."""
    kept = []
    for c in checked:
        count = c.accuracy.get("non_finite")
        if not count:
            kept.append(c)
            continue
        c.artifact.path.unlink(missing_ok=True)
        reason = (f"{count} non-finite output values (NaN/inf) from {c.artifact.runtime} on "
                  f"{c.accuracy['samples']} eval samples where the float model's are finite; not shipped")
        not_produced.append({"runtime": c.artifact.runtime, "precision": c.artifact.precision,
                             "path": c.artifact.path.name, "reason": reason})
        log.warning("%s: %s", c.artifact.path.name, reason)
    return kept


OFF_SIMULATION_DB = 3.0  # an int8 artifact this far below the simulated graph's SQNR computes something else


def flag_off_simulation(artifacts: list[dict], simulated: dict) -> None:
    """Marks each int8 artifact whose SQNR to float is OFF_SIMULATION_DB or more below the simulated int8
    graph's, and warns: every runtime gets the same scales and integer weights, so such a gap is the
    runtime computing an op otherwise (Hugging Face EfficientNet's pool gave all-zero outputs in ONNX
    Runtime and LiteRT, 0 dB against 40.5 simulated, before it was rewritten)."""
    target = simulated.get("sqnr_db")
    for a in artifacts:
        got = a["accuracy"].get("sqnr_db")
        if a["precision"] != "int8" or target is None or got is None:
            continue
        a["off_simulation"] = got < target - OFF_SIMULATION_DB
        if a["off_simulation"]:
            log.warning("%s computes other values than the simulated int8 graph: SQNR %.1f dB to float against "
                        "%.1f dB simulated (%s output steps apart); an op is lowered differently in %s. "
                        "`edgeship debug` names the layer where the error jumps; ship another runtime's "
                        "artifact or keep that layer float (recipe keep_float)", a["path"], got, target,
                        a.get("vs_simulated_steps"), a["runtime"])


OFF_FLOAT_DB = 60.0  # an fp32 artifact below this SQNR to the PyTorch model computes something else


def flag_off_float(artifacts: list[dict]) -> None:
    """Marks each fp32 artifact whose SQNR to the PyTorch model is below OFF_FLOAT_DB (`off_float`), and
    warns: float32 kernels agree with PyTorch to 100 dB and more, so such a file computes something else
    (ONNX Runtime's graph optimizations on a Hugging Face BiT: 44 dB, 121 dB with them off)."""
    for a in artifacts:
        got = a["accuracy"].get("sqnr_db")
        if a["precision"] != "fp32" or got is None:
            continue
        a["off_float"] = got < OFF_FLOAT_DB
        if a["off_float"]:
            log.warning("%s is not the PyTorch model: SQNR %.1f dB to it (float32 runtimes agree to 100 dB and "
                        "more); %s computes an op otherwise. Check the file in that runtime before shipping it, "
                        "or ship another runtime's", a["path"], got, a["runtime"])


def flag_slower_than_fp32(artifacts: list[dict]) -> None:
    """Marks each quantized artifact whose host median is above its runtime's fp32 artifact, and warns."""
    fp32 = {a["runtime"]: a for a in artifacts if a["precision"] == "fp32"}
    for a in artifacts:
        base = fp32.get(a["runtime"])
        if a["precision"] == "fp32" or base is None:
            continue
        ratio = a["latency_ms"]["median"] / base["latency_ms"]["median"]
        a["latency_ms"]["vs_fp32"] = round(ratio, 3)
        a["slower_than_fp32"] = ratio > 1.0
        if a["path"].endswith(".ort") and a["precision"] == "int8" and not arm_host():
            a["host_timing"] = ORT_ON_X86
        if a["slower_than_fp32"]:
            log.warning("%s is slower than %s on this machine (%.2fx the median); %s", a["path"], base["path"], ratio,
                        a.get("host_timing") or f"check the ops it runs outside int8 kernels, or ship the fp32 "
                                                f"artifact for {a['runtime']}")


# measured on x86_64 (MobileNetV2, 2 threads): model.int8.onnx 4.0 ms with ONNX Runtime's defaults, 14.1 ms with
# session.qdqisint8allowed=1, the .ort 14.2 ms
ORT_ON_X86 = ("the .ort file is optimized as an ARM build runs it (signed int8 kernels, "
              "session.qdqisint8allowed=1), which ONNX Runtime on a non-ARM host computes on a slow path: this "
              "host time does not predict the device; time it there (edgeship bench OUT --device ...)")


def arm_host() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64", "armv8l", "armv7l")


# ONNX Runtime's x86 int8 kernels multiply uint8 activations by int8 weights with AVX2's vpmaddubsw, whose
# 16-bit pair sums saturate where the CPU has no VNNI (ONNX Runtime's quantization guide); an ARM device
# and a VNNI CPU sum exactly. Measured: the LSTM spotter's int8-dynamic .onnx, 24.7 dB on a 2-core AMD EPYC
# (AVX2) against more than 35 dB on a Xeon with VNNI.
HOST_SATURATION = ("measured on an x86 CPU without VNNI, whose ONNX Runtime int8 kernels saturate 16-bit sums: "
                   "the device (ARM, or x86 with VNNI) computes this file more accurately than this host")


def flag_host_saturation(artifacts: list[dict]) -> None:
    """Marks ONNX Runtime's int8 artifacts verified on a host whose int8 kernels saturate (`host_accuracy`),
    and says so once."""
    if not saturating_host():
        return
    flagged = [a for a in artifacts if a["runtime"] == "onnxruntime" and a["precision"] in ("int8", "int8-dynamic")]
    for a in flagged:
        a["host_accuracy"] = HOST_SATURATION
    if flagged:
        log.warning("%s: accuracy %s", ", ".join(a["path"] for a in flagged), HOST_SATURATION)


def saturating_host() -> bool:
    """An x86 CPU with AVX2 and no VNNI (AVX512-VNNI or AVX-VNNI), read from /proc/cpuinfo."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags()
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & flags
