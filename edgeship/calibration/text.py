"""Text for language models: a .txt file, or a .jsonl file with one record per line whose `text` field
(or only string field) is a document; cut into fixed windows of the model's own tokens."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edgeship.errors import CalibrationError

SUFFIXES = (".txt", ".jsonl")


def read_text(path: str | Path) -> str:
    """The documents of `path` joined by blank lines."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such text file; pass a .txt file or a .jsonl file with a `text` field")
    if path.suffix not in SUFFIXES:
        raise CalibrationError(f"{path}: unsupported text file (suffix {path.suffix!r}); pass a .txt file or a "
                               ".jsonl file with a `text` field per line")
    raw = path.read_text(encoding="utf-8", errors="replace")
    text = raw if path.suffix == ".txt" else "\n\n".join(_jsonl_documents(path, raw))
    if not text.strip():
        raise CalibrationError(f"{path} holds no text; give it the text to calibrate or evaluate on")
    return text


def _jsonl_documents(path: Path, raw: str) -> list[str]:
    documents = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise CalibrationError(f"{path}:{number}: not JSON ({exc}); write one JSON object per line") from exc
        strings = [v for v in record.values() if isinstance(v, str)] if isinstance(record, dict) else []
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            documents.append(record["text"])
        elif len(strings) == 1:
            documents.append(strings[0])
        else:
            raise CalibrationError(f"{path}:{number}: no `text` field; give each line a \"text\": \"...\" string")
    return documents


def token_windows(tokenizer, text: str, length: int, count: int | None = None) -> torch.Tensor:
    """[windows, length] token ids: the text tokenized once with the model's tokenizer and cut into
    consecutive non-overlapping windows (the last partial one dropped); the first `count` of them."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = len(ids) // length
    if windows == 0:
        raise CalibrationError(f"the text has {len(ids)} tokens, fewer than one window of {length}; give more "
                               "text or a shorter --max-seq-len")
    windows = min(windows, count) if count else windows
    return torch.tensor(ids[:windows * length], dtype=torch.long).reshape(windows, length)
