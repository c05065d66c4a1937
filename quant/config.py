"""Core configuration types: bit pairs, timestep groups and the per-layer, per-timestep BitConfig.

All are frozen and validated on construction; errors say what is wrong and how to fix it.
Serialization is versioned JSON/YAML (never pickle). Layer patterns resolve like torchao's
`FqnToConfig`: an exact FQN wins over a `re:` regex (first matching regex in file order), which
wins over `_default`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from quant.errors import ConfigError  # re-exported: the long-standing import path

HIGH_PRECISION = 16
"""16 bits means: keep this operand in high precision (bf16/fp32), unquantized."""

WEIGHT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8, HIGH_PRECISION)
ACTIVATION_BITS: tuple[int, ...] = (4, 6, 8, HIGH_PRECISION)

FORMAT_NAME = "bitsearch.bitconfig"
FORMAT_VERSION = 1

DEFAULT_KEY = "_default"
REGEX_PREFIX = "re:"


@dataclass(frozen=True, order=True)
class Bits:
    """Weight and activation bit-widths of one layer in one timestep group."""

    w: int
    a: int

    def __post_init__(self) -> None:
        if self.w not in WEIGHT_BITS:
            raise ConfigError(f"weight bits {self.w} not supported; choose one of {list(WEIGHT_BITS)}")
        if self.a not in ACTIVATION_BITS:
            raise ConfigError(
                f"activation bits {self.a} not supported; choose one of {list(ACTIVATION_BITS)}"
            )

    def __str__(self) -> str:
        return f"W{self.w}A{self.a}"

    @property
    def is_full_precision(self) -> bool:
        return self.w == HIGH_PRECISION and self.a == HIGH_PRECISION

    @classmethod
    def parse(cls, text: str | Bits | Mapping[str, int]) -> Bits:
        """Parse `"W4A8"` (case-insensitive), a `{"w": 4, "a": 8}` mapping, or a Bits."""
        if isinstance(text, Bits):
            return text
        if isinstance(text, Mapping):
            return cls(int(text["w"]), int(text["a"]))
        m = re.fullmatch(r"[wW](\d+)[aA](\d+)", str(text).strip())
        if not m:
            raise ConfigError(f"cannot parse bits {text!r}; write them like 'W4A8' (16 = high precision)")
        return cls(int(m.group(1)), int(m.group(2)))


FULL_PRECISION = Bits(HIGH_PRECISION, HIGH_PRECISION)


@dataclass(frozen=True)
class TimestepGroups:
    """A partition of the sampler's steps 0..num_steps-1 into contiguous groups.

    `starts` holds the first step of every group (the first is always 0). One group is classic
    per-layer search. Steps are in sampling order: step 0 is the noisiest.
    """

    num_steps: int
    starts: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}")
        s = tuple(int(x) for x in self.starts)
        object.__setattr__(self, "starts", s)
        if not s or s[0] != 0:
            raise ConfigError(f"timestep groups must start at step 0, got starts {list(s)}")
        if any(b <= a for a, b in zip(s, s[1:], strict=False)):
            raise ConfigError(f"group starts must be strictly increasing, got {list(s)}")
        if s[-1] >= self.num_steps:
            raise ConfigError(
                f"group start {s[-1]} is past the last step {self.num_steps - 1}: "
                f"every group needs at least one of the sampler's {self.num_steps} steps"
            )

    @classmethod
    def uniform(cls, num_steps: int, num_groups: int) -> TimestepGroups:
        """`num_groups` groups of (nearly) equal length."""
        if not 1 <= num_groups <= num_steps:
            raise ConfigError(f"need 1 <= num_groups <= num_steps ({num_steps}), got {num_groups}")
        return cls(num_steps, tuple(round(i * num_steps / num_groups) for i in range(num_groups)))

    @classmethod
    def from_spans(cls, spans: Iterable[Iterable[int]], num_steps: int | None = None) -> TimestepGroups:
        """From inclusive spans like `[(0, 2), (3, 16), (17, 19)]`; they must cover every step, no gaps."""
        pairs = [tuple(int(v) for v in sp) for sp in spans]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ConfigError(f"timestep spans must be [first, last] pairs, got {pairs}")
        total = pairs[-1][1] + 1 if num_steps is None else num_steps
        expected = 0
        for lo, hi in pairs:
            if lo != expected or hi < lo:
                raise ConfigError(
                    f"timestep spans {pairs} leave a gap or overlap at step {expected}: spans must be "
                    f"contiguous, inclusive, and cover steps 0..{total - 1}"
                )
            expected = hi + 1
        if expected != total:
            raise ConfigError(
                f"timestep spans {pairs} cover steps 0..{expected - 1} but the sampler has {total} steps; "
                f"extend the last span to {total - 1}"
            )
        return cls(total, tuple(p[0] for p in pairs))

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def spans(self) -> list[tuple[int, int]]:
        ends = [*(s - 1 for s in self.starts[1:]), self.num_steps - 1]
        return list(zip(self.starts, ends, strict=True))

    def sizes(self) -> list[int]:
        return [hi - lo + 1 for lo, hi in self.spans]

    def group_of(self, step: int) -> int:
        if not 0 <= step < self.num_steps:
            raise ConfigError(f"step {step} outside the sampler's steps 0..{self.num_steps - 1}")
        g = 0
        while g + 1 < len(self.starts) and self.starts[g + 1] <= step:
            g += 1
        return g

    def __str__(self) -> str:
        return " ".join(f"[{lo}-{hi}]" for lo, hi in self.spans)

    def to_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "spans": [list(sp) for sp in self.spans]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TimestepGroups:
        return cls.from_spans(d["spans"], int(d["num_steps"]))


RuleValue = tuple[Bits, ...]


@dataclass(frozen=True)
class BitConfig:
    """Weight/activation bits for each (layer FQN, timestep group).

    `rules` maps an exact FQN, a `re:<regex>` pattern (matched with `re.fullmatch`), or `_default`
    to one Bits per timestep group. Layers no rule matches run in high precision (W16A16) unless a
    `_default` is given. `weight_group_size` switches weights from per-output-channel scales to
    group-wise scales along the input dimension.
    """

    groups: TimestepGroups
    rules: Mapping[str, Any] = field(default_factory=dict)  # normalized to RuleValue on construction
    weight_group_size: int | None = None

    def __post_init__(self) -> None:
        norm: dict[str, RuleValue] = {}
        for key, value in self.rules.items():
            norm[key] = self._normalize(key, value)
            if key.startswith(REGEX_PREFIX):
                try:
                    re.compile(key[len(REGEX_PREFIX) :])
                except re.error as e:
                    raise ConfigError(f"rule {key!r}: invalid regular expression ({e})") from None
        object.__setattr__(self, "rules", norm)
        if self.weight_group_size is not None and self.weight_group_size < 1:
            raise ConfigError(f"weight_group_size must be a positive integer, got {self.weight_group_size}")

    def _normalize(self, key: str, value: Any) -> RuleValue:
        if isinstance(value, str | Bits | Mapping):
            return (Bits.parse(value),) * len(self.groups)
        bits = tuple(Bits.parse(v) for v in value)
        if len(bits) != len(self.groups):
            raise ConfigError(
                f"rule {key!r} gives {len(bits)} bit pairs but there are {len(self.groups)} timestep groups "
                f"({self.groups}); give one per group, or a single pair for all groups"
            )
        return bits

    # ---- construction helpers -------------------------------------------------------------
    @classmethod
    def uniform(cls, groups: TimestepGroups | int, bits: Bits | str, **kw: Any) -> BitConfig:
        """Every layer at the same bits in every group. `groups` may be a step count (one group)."""
        g = TimestepGroups(groups) if isinstance(groups, int) else groups
        return cls(g, {DEFAULT_KEY: bits}, **kw)

    # ---- resolution -------------------------------------------------------------------------
    @cached_property
    def _regexes(self) -> list[tuple[re.Pattern[str], RuleValue]]:
        return [
            (re.compile(k[len(REGEX_PREFIX) :]), v) for k, v in self.rules.items() if k.startswith(REGEX_PREFIX)
        ]

    def layer_bits(self, fqn: str) -> RuleValue:
        """The Bits of `fqn` in each timestep group (exact > regex > _default > W16A16)."""
        if fqn in self.rules:
            return self.rules[fqn]
        for pattern, value in self._regexes:
            if pattern.fullmatch(fqn):
                return value
        return self.rules.get(DEFAULT_KEY, (FULL_PRECISION,) * len(self.groups))

    def bits(self, fqn: str, group: int) -> Bits:
        return self.layer_bits(fqn)[group]

    def resolve(self, layer_names: Iterable[str]) -> dict[str, RuleValue]:
        """Per-layer bits for a model's layers; raises if a rule names a layer the model lacks."""
        names = list(layer_names)
        known = set(names)
        unknown = [k for k in self.rules if k != DEFAULT_KEY and not k.startswith(REGEX_PREFIX) and k not in known]
        if unknown:
            hint = _closest(unknown[0], names)
            raise ConfigError(
                f"{len(unknown)} rule(s) name layers this model does not have, e.g. {unknown[0]!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + "; run `bitsearch inspect` to list the model's layer names"
            )
        dead = [p.pattern for p, _ in self._regexes if not any(p.fullmatch(n) for n in names)]
        if dead:
            raise ConfigError(
                f"regex rule 're:{dead[0]}' matches no layer of this model; "
                "fix the pattern (it is matched against whole FQNs) or remove it"
            )
        return {n: self.layer_bits(n) for n in names}

    # ---- serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        rules: dict[str, Any] = {}
        for k, v in self.rules.items():
            rules[k] = str(v[0]) if len(set(v)) == 1 else [str(b) for b in v]
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "timestep_groups": self.groups.to_dict(),
            "weight_group_size": self.weight_group_size,
            "rules": rules,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BitConfig:
        if d.get("format") != FORMAT_NAME:
            raise ConfigError(f"not a bitsearch bit config (format is {d.get('format')!r}, expected {FORMAT_NAME!r})")
        version = d.get("version")
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"bit config version {version} is not supported by this bitsearch (reads version "
                f"{FORMAT_VERSION}); upgrade bitsearch or re-export the config"
            )
        return cls(TimestepGroups.from_dict(d["timestep_groups"]), d["rules"], d.get("weight_group_size"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_text(cls, text: str) -> BitConfig:
        """Parse JSON or YAML text (YAML is a superset of JSON; safe_load never builds objects)."""
        data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise ConfigError("a bit config file must hold a mapping at its top level")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        p = Path(path)
        text = self.to_yaml() if p.suffix in (".yaml", ".yml") else self.to_json()
        p.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> BitConfig:
        return cls.from_text(Path(path).read_text())


def _closest(name: str, candidates: list[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None
