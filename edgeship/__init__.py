"""edgeship: one command from a PyTorch model to verified int8 ONNX Runtime, ExecuTorch and LiteRT artifacts."""

__version__ = "0.1.0"
