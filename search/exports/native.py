"""`json` / `yaml`: bitsearch's own versioned schema (`BitConfig.to_dict`), the lossless format."""

from __future__ import annotations

from quant.config import BitConfig
from search.exports._common import EXPORTERS, IMPORTERS


@EXPORTERS.register("json")
def export_json(config: BitConfig) -> str:
    return config.to_json()


@EXPORTERS.register("yaml")
def export_yaml(config: BitConfig) -> str:
    return config.to_yaml()


@IMPORTERS.register("json")
@IMPORTERS.register("yaml")
def import_text(text: str) -> BitConfig:
    """JSON or YAML text of a bitsearch bit config (version-checked by `BitConfig.from_dict`)."""
    return BitConfig.from_text(text)
