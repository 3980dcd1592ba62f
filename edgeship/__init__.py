"""edgeship: one command from a PyTorch model to verified int8 ONNX Runtime, ExecuTorch and LiteRT artifacts."""

import os

# MKL, which torch's CPU build computes matmuls with, picks kernels by the memory alignment of each array,
# so the same sums differ in their last bits from one run (or heap state) to the next; calibration turns
# such a bit into a changed scale. Its strict mode gives the same bits every time (before torch loads MKL).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
