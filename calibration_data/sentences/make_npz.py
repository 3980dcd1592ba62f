"""Tokenize sentences.txt for all-MiniLM-L6-v2 (sequence length 64) into sentences-minilm.npz.

    .venv/bin/python calibration_data/sentences/make_npz.py
"""

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1] / "examples"))

import minilm  # noqa: E402

sentences = [s for s in (HERE / "sentences.txt").read_text().splitlines() if s.strip()]
arrays = minilm.tokenize(sentences)
np.savez_compressed(HERE.parent / "sentences-minilm.npz", **arrays)
print(f"{len(sentences)} sentences -> {HERE.parent / 'sentences-minilm.npz'}")
