"""`json` / `yaml`: bitsearch's own versioned schema (`BitConfig.to_dict`), the lossless format."""

from __future__ import annotations

from quant.config import BitConfig


def export_json(config: BitConfig) -> str:
    return config.to_json()


def export_yaml(config: BitConfig) -> str:
    return config.to_yaml()


def import_text(text: str) -> BitConfig:
    """JSON or YAML text of a bitsearch bit config (version-checked by `BitConfig.from_dict`)."""
    return BitConfig.from_text(text)
