"""The conformance suite every export/import format runs through.

A plugin author registers a format (`@EXPORTERS.register("mine")` from `search.exports._common`,
and `IMPORTERS` for the way back), then subclasses `FormatSuite` in a test file and overrides `fmt`:

    from search.exports.testing import FormatSuite

    class TestMyFormat(FormatSuite):
        @pytest.fixture
        def fmt(self) -> str:
            return "mine"

Checks: an export is text or a JSON-serialisable mapping, the same every time, and leaves the config
as it was; a format that also imports reads its own export back to the same bits for every layer at
every step (with the layer list and step count a format without them needs). pytest is imported
here: this module is for test files only.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from quant.config import BitConfig, Bits, TimestepGroups
from search.exports import IMPORT_FORMATS, export, import_config
from search.exports._common import IMPORTERS

LAYERS = {"conv_in": "conv", "blocks.1.proj": "linear", "blocks.11.proj": "linear", "proj": "linear",
          "blocks.1.attn.to_k": "linear", "conv_out": "conv"}
"""A model's layers as the formats take them (FQN -> kind), with names a regex rule can match."""


def sample_config() -> BitConfig:
    """What every built-in format can express: one timestep group, a default, exact rules, a layer
    kept in high precision (mixed 16-bit operands are not: ViDiT-Q keeps 16 bits per whole layer)."""
    return BitConfig(TimestepGroups(8), {"_default": "W8A8", "proj": "W4A8", "conv_out": "W16A16",
                                         "blocks.11.proj": "W2A8", "conv_in": "W16A16"})


def bits_by_step(config: BitConfig) -> dict[tuple[str, int], Bits]:
    """What the config means, whatever its rules and groups look like: bits of each layer at each step."""
    resolved = config.resolve(LAYERS)
    return {(fqn, step): resolved[fqn][config.groups.group_of(step)]
            for fqn in LAYERS for step in range(config.groups.num_steps)}


class FormatSuite:
    @pytest.fixture
    def fmt(self) -> str:
        raise NotImplementedError("override the `fmt` fixture with the registered format under test")

    @pytest.fixture
    def config(self) -> BitConfig:
        """Override for a format that expresses less than `sample_config` holds."""
        return sample_config()

    @pytest.fixture
    def exported(self, fmt: str, config: BitConfig) -> str | dict[str, Any]:
        return export(config, fmt, layers=LAYERS)

    def test_export_is_text_or_json_and_deterministic(self, fmt: str, config: BitConfig,
                                                     exported: str | dict[str, Any]) -> None:
        copy = BitConfig.from_dict(config.to_dict())
        assert isinstance(exported, str | dict)
        if isinstance(exported, dict):
            json.dumps(exported)  # a mapping must be writable as it is
        assert export(config, fmt, layers=LAYERS) == exported
        assert config == copy  # exporting changes nothing in the config

    def test_a_format_that_imports_reads_its_own_export_back(self, fmt: str, config: BitConfig,
                                                             exported: str | dict[str, Any]) -> None:
        if fmt not in IMPORT_FORMATS:
            pytest.skip(f"{fmt} is a one-way export")
        options: dict[str, Any] = {}
        text: Any = exported
        if isinstance(exported, dict) and set(exported) == {"weights", "activations"}:  # two files
            text, options["activations"] = exported["weights"], exported["activations"]
        params = IMPORTERS.params(fmt, skip=1)
        if params is None or "num_steps" in params:  # formats without steps of their own
            options["num_steps"] = config.groups.num_steps
        back = import_config(text, fmt, layers=LAYERS, **options)
        assert bits_by_step(back) == bits_by_step(config)
