"""How close an artifact's outputs are to float: SQNR, cosine, top-k, quantization steps, decisions."""
