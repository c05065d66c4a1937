"""Import published configs (bitsearch JSON/YAML, MixDQ YAML, step policies) as candidates of a study.

Imported configs are queued with origin `import`, so they are evaluated on the user's model by the
same real quantized runs as the solvers' proposals and land on the same Pareto front. Each is
converted to the study's timestep groups first (the study calibrates activation ranges per its own
groups): a config with one bit-width per layer gets it in every group; a config with other groups
is refused. Names are checked against the study's layer inventory when it has one. Importing the
same config twice changes nothing (candidates are unique by content).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quant.config import BitConfig, ConfigError, TimestepGroups
from search.evaluation import CHEAP
from search.exports import IMPORT_FORMATS, format_options, formats_taking, import_config
from search.origins import IMPORT, add_candidates


def import_candidates(storage: Any, study: str, files: Sequence[str | Path], fmt: str = "json",
                      activations: str | Path | None = None, protected: str | None = None) -> list[tuple[int, bool]]:
    """Queue each file's config in `study`; returns (candidate id, created) per config.

    `fmt`: json, yaml, mixdq, vidit-q or step-policy. For mixdq and vidit-q, `files` are weights files
    and `activations` the activations file shared by them (or None: activations stay in high
    precision); `protected` is mixdq's reading of layers its activations file leaves out (see
    `search.exports.mixdq`). A step policy is rebuilt for the study's step count first."""
    from search.spec import StudySpec

    if fmt not in IMPORT_FORMATS:
        raise ConfigError(f"cannot import format {fmt!r}; valid: {', '.join(IMPORT_FORMATS)}")
    takes = format_options(fmt, importing=True)
    options: dict[str, Any] = {k: v for k, v in (("activations", activations), ("protected", protected)) if v is not None}
    for option in options:
        if option not in takes:
            raise ConfigError(f"--{option} goes with --format {' or '.join(formats_taking(option, True))} only")
    info = storage.get_study(study)
    groups = StudySpec.from_dict(info.spec).groups
    layers = [d["fqn"] for d in storage.get_layers(study)] or None
    configs = []
    for f in files:
        text = Path(f).read_text()
        read: dict[str, Any] = {**options, **({"activations": Path(activations).read_text()} if activations is not None else {})}
        # the study's groups to a format that takes them, else its step count (a step policy rebuilds its spans)
        steps: dict[str, Any] = {"groups": groups} if "groups" in takes else {"num_steps": groups.num_steps}
        config = import_config(text, fmt, layers=layers, **steps, **read)
        try:
            configs.append(to_groups(config, groups).to_dict())
        except ConfigError as e:
            raise ConfigError(f"{f}: {e}") from None
    return add_candidates(storage, study, configs, IMPORT, fidelity=CHEAP) if configs else []


def to_groups(config: BitConfig, groups: TimestepGroups) -> BitConfig:
    """`config` on `groups`: unchanged if already there; one bit-width per layer is spread over every group."""
    if config.groups == groups:
        return config
    if len(config.groups) == 1 or all(len(set(v)) == 1 for v in config.rules.values()):
        return BitConfig(groups, {k: v[0] for k, v in config.rules.items()}, config.weight_group_size)
    raise ConfigError(
        f"the config's timestep groups {config.groups} (num_steps={config.groups.num_steps}) differ from the "
        f"study's {groups} (num_steps={groups.num_steps}) and its bits change across groups; "
        "export it with the study's groups or import it into a study with the same steps and groups"
    )
