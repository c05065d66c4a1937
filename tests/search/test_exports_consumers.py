"""Exports read by their real consumers (ModelOpt's `mtq.quantize`, diffusers' `diffusion_step_policy`
parser) and imports of the configs MixDQ and ViDiT-Q released (golden files in tests/fixtures/,
provenance in tests/fixtures/README.md)."""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from quant.config import BitConfig, Bits, ConfigError, TimestepGroups
from search.exports import export, import_config
from search.exports._common import group_summary, mean_weight_bits
from search.exports.mixdq import protected_layers

FIXTURES = Path(__file__).parents[1] / "fixtures"
MIXDQ = FIXTURES / "mixdq"
VIDITQ = FIXTURES / "vidit_q"


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- weight_group_size survives every import (issue 11: a mutation dropping it survived) -----------

def test_weight_group_size_survives_json_yaml_step_policy_and_study_import(tmp_path) -> None:
    from search.exports.importing import import_candidates
    from search.spec import StudySpec
    from storage import Storage

    cfg = BitConfig(TimestepGroups.uniform(8, 2), {"_default": ["W4A8", "W8A8"], "proj": "W4A16"},
                    weight_group_size=64)
    for fmt in ("json", "yaml", "step-policy"):
        back = import_config(export(cfg, fmt), fmt)
        assert back.weight_group_size == 64, fmt
        assert back == cfg
    st = Storage(str(tmp_path / "s.db"))
    st.create_study("t", StudySpec(num_steps=8, timestep_groups=2).to_dict())
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    [(cid, created)] = import_candidates(st, "t", [tmp_path / "c.yaml"], "yaml")
    stored = BitConfig.from_dict(next(c for c in st.list_candidates("t") if c.id == cid).config)
    assert created and stored.weight_group_size == 64 and stored == cfg


# ---- ModelOpt: the list-format quant_cfg applied by the real mtq.quantize ----------------------------

class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Linear(16, 16) for _ in range(12)])
        self.proj = nn.Linear(16, 16)
        self.conv_out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        t = h.flatten(2).mean(-1).repeat(1, 2)
        for m in (*self.blocks, self.proj):
            t = m(t)
        return self.conv_out(h).mean() + t.mean()


def test_modelopt_quantize_applies_exactly_the_exported_bits_without_deprecation() -> None:
    if importlib.util.find_spec("modelopt") is None:
        pytest.skip("nvidia-modelopt is not installed (pip install -e .[dev]): structure is tested in test_exports")
    import modelopt
    import modelopt.torch.quantization as mtq

    major, minor = (int(x) for x in modelopt.__version__.split(".")[:2])
    assert (major, minor) >= (0, 44), "the list-format quant_cfg needs ModelOpt >= 0.44"
    model = Tiny()
    layers = {n: ("conv" if isinstance(m, nn.Conv2d) else "linear") for n, m in model.named_modules()
              if isinstance(m, nn.Linear | nn.Conv2d)}
    # blocks.1 vs blocks.11: the '.' before the quantizer name keeps one from matching the other.
    cfg = BitConfig(TimestepGroups(4), {"conv_in": "W8A8", "blocks.1": "W4A8", "blocks.11": "W6A16",
                                        "proj": "W16A8", "conv_out": "W2A16", "blocks.3": "W16A16"})
    exported = export(cfg, "modelopt", layers=layers)
    assert isinstance(exported, dict) and isinstance(exported["quant_cfg"], list)
    x = torch.randn(2, 4, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel = mtq.quantize(model, json.loads(json.dumps(exported)), forward_loop=lambda m: m(x))
    deprecations = [str(w.message) for w in caught
                    if issubclass(w.category, DeprecationWarning | FutureWarning) or "deprecat" in str(w.message)]
    assert deprecations == []
    seen: dict[str, tuple[bool, int]] = {}
    for name, q in qmodel.named_modules():
        if name.endswith(("weight_quantizer", "input_quantizer", "output_quantizer")):
            seen[name] = (bool(q.is_enabled), int(q.num_bits))
    assert {n.rsplit(".", 1)[0] for n in seen} == set(layers)  # every layer got its quantizers
    for fqn in layers:
        b = cfg.bits(fqn, 0)
        for q, bits in (("weight_quantizer", b.w), ("input_quantizer", b.a)):
            enabled, num_bits = seen[f"{fqn}.{q}"]
            assert enabled == (bits != 16), (fqn, q)
            if enabled:
                assert num_bits == bits, (fqn, q)
        assert not seen[f"{fqn}.output_quantizer"][0]
    assert torch.isfinite(qmodel(x))


# ---- diffusers' diffusion_step_policy -------------------------------------------------------------

def _diffusers_policy():  # type: ignore[no-untyped-def]
    return pytest.importorskip("diffusers.pipelines.cosmos.mixed_precision")


def test_diffusion_step_policy_is_parsed_by_diffusers_and_schedules_the_same_steps() -> None:
    mp = _diffusers_policy()
    groups = TimestepGroups.from_spans([(0, 1), (2, 16), (17, 19)])
    cfg = BitConfig(groups, {"_default": ["W8A16", "W8A8", "W8A16"], "conv_in": ["W4A16", "W4A8", "W4A16"],
                             "proj": "W8A16"})
    block = export(cfg, "diffusion-step-policy", layers=["conv_in", "proj", "mid"])
    assert isinstance(block, dict)
    policy = block["quantization_config"]["runtime"]["diffusion_step_policy"]
    parsed = mp.parse_diffusion_step_policy(policy)
    assert (parsed.first_steps, parsed.last_steps) == (2, 3)
    runtime = mp.Cosmos3MixedPrecisionConfig.resolve(
        quantization_config={"quant_method": "modelopt", "quant_algo": "FP8", **block["quantization_config"]})
    for step in range(20):
        a16 = cfg.bits("mid", groups.group_of(step)).a == 16
        assert runtime.use_high_precision(step, 20) == a16, step
    # One group (no per-step part): both windows empty, still valid for diffusers.
    flat = export(BitConfig(TimestepGroups(20), {"_default": "W8A8"}), "diffusion-step-policy", layers=["a"])
    assert isinstance(flat, dict)
    assert mp.parse_diffusion_step_policy(flat["quantization_config"]["runtime"]["diffusion_step_policy"]).first_steps == 0


@pytest.mark.parametrize(("rules", "reason"), [
    ({"_default": ["W8A16", "W4A8", "W8A16"]}, "weights change across steps"),
    ({"_default": ["W8A8", "W8A16", "W8A8"]}, "between native steps"),
    ({"_default": ["W8A16", "W8A8", "W8A8"], "proj": ["W8A8", "W8A8", "W8A6"]}, "native steps must share"),
    ({"_default": "W8A16"}, "every step runs A16"),
])
def test_diffusion_step_policy_refuses_schedules_the_schema_cannot_say(rules, reason) -> None:
    cfg = BitConfig(TimestepGroups.from_spans([(0, 1), (2, 16), (17, 19)]), rules)
    with pytest.raises(ConfigError, match=reason):
        export(cfg, "diffusion-step-policy", layers=["proj", "mid"])


def test_step_policy_carries_to_another_step_count() -> None:
    cfg = BitConfig(TimestepGroups.from_spans([(0, 1), (2, 16), (17, 19)]),
                    {"_default": ["W8A16", "W8A8", "W8A16"], "proj": ["W4A8", "W6A8", "W8A8"]})
    policy = export(cfg, "step-policy")
    assert isinstance(policy, dict)
    assert [(e.get("count"), e.get("rest")) for e in policy["schedule"]] == [(2, None), (None, True), (3, None)]
    assert import_config(policy, "step-policy") == cfg  # its own step count: unchanged
    at30 = import_config(policy, "step-policy", num_steps=30)
    assert at30.groups.spans == [(0, 1), (2, 26), (27, 29)]
    assert at30.rules == cfg.rules
    with pytest.raises(ConfigError, match="num_steps >= 6"):
        import_config(policy, "step-policy", num_steps=5)
    for entry in policy["schedule"]:  # a hand-written policy with absolute spans only
        entry.pop("count", None)
        entry.pop("rest", None)
    with pytest.raises(ConfigError, match="applies only at its own num_steps"):
        import_config(policy, "step-policy", num_steps=30)


# ---- MixDQ's released SDXL-Turbo configs ------------------------------------------------------------

@pytest.fixture(scope="module")
def sdxl_params() -> dict[str, int]:
    """FQN -> weight parameters of the SDXL UNet inventory, built on the meta device."""
    from quant.layers import inventory
    from workloads.denoisers import example_inputs, load_denoiser

    unet = load_denoiser("sdxl-unet", device="meta")
    return {x.fqn: x.params for x in inventory(unet, example_inputs(unet))}


@pytest.mark.parametrize("name", ["weight_4.08.yaml", "weight_8.00.yaml"])
def test_mixdq_released_weights_map_onto_sdxl_and_round_trip(name, sdxl_params) -> None:
    text = (MIXDQ / name).read_text()
    cfg = import_config(text, "mixdq", num_steps=1, layers=list(sdxl_params))
    assert len(sdxl_params) == 794 and set(cfg.rules) == set(sdxl_params)  # every layer maps, none left over
    target = float(re.search(r"weight_(\d+\.\d+)\.yaml", name).group(1))  # type: ignore[union-attr]
    assert mean_weight_bits(cfg, sdxl_params) == pytest.approx(target, abs=0.05)
    assert all(b.a == 16 for v in cfg.rules.values() for b in v)  # no activations file: A16
    files = export(cfg, "mixdq", layers=list(sdxl_params))
    assert isinstance(files, dict)
    assert files["weights"] == text  # byte-identical to MixDQ's own file
    assert files["activations"] == "{}\n"  # every activation A16: nothing to list


def test_mixdq_protected_layers_read_either_way_and_a16_is_omitted() -> None:
    weights = "model.a: 4\nmodel.b: 8\nmodel.c: 2\n"
    acts = "model.a: 8\nmodel.c: 4\n"  # b is "protected": in the weights file only
    assert protected_layers(weights, acts) == ["b"]
    kernel = import_config(weights, "mixdq", activations=acts, num_steps=4)
    assert kernel.bits("b", 0) == Bits(8, 16) and kernel.bits("a", 0) == Bits(4, 8)
    algo = import_config(weights, "mixdq", activations=acts, num_steps=4, protected="w16a16")
    assert algo.bits("b", 0) == Bits(16, 16) and algo.bits("c", 0) == Bits(2, 4)
    with pytest.raises(ConfigError, match="choose one of weights-only, w16a16"):
        import_config(weights, "mixdq", activations=acts, num_steps=4, protected="fp16")
    files = export(kernel, "mixdq")
    assert isinstance(files, dict)
    assert yaml.safe_load(files["activations"]) == {"model.a": 8, "model.c": 4}  # no 16: MixDQ knows 2, 4, 8
    assert files["weights"] == weights and files["activations"] == acts
    assert import_config(files["weights"], "mixdq", activations=files["activations"], num_steps=4) == kernel


# ---- ViDiT-Q's released timestep-wise configs (OpenSora STDiT, 20 steps) -----------------------------

def _vidit_q() -> BitConfig:
    return import_config((VIDITQ / "t20_weight_6_8_mp.yaml").read_text(), "vidit-q",
                         activations=(VIDITQ / "t20_act_6_mp.yaml").read_text())


def test_vidit_q_ranges_become_groups_in_loop_order_with_fp_layers_at_16_bits() -> None:
    cfg = _vidit_q()
    # "19-15" is timesteps 19..15, the first five iterations of the loop; then 14-10, 9-5, 4-0.
    assert cfg.groups.spans == [(0, 4), (5, 9), (10, 14), (15, 19)]
    assert len(cfg.rules) == 28 * 13 and "blocks.0.attn_temp.q" in cfg.rules  # the file's own STDiT names
    assert cfg.bits("blocks.26.attn.k", 0) == Bits(8, 6)         # "19-15": attn of block 26 at W8
    assert cfg.bits("blocks.26.attn.k", 1) == Bits(6, 6)
    assert cfg.bits("blocks.14.attn_temp.v", 1) == Bits(8, 6)    # "14-10"
    assert cfg.bits("blocks.24.attn.q", 0) == Bits(16, 16)       # fp_layers "19-15": blocks.24.attn.
    assert cfg.bits("blocks.24.attn_temp.q", 0) == Bits(6, 6)    # ... but not attn_temp
    assert cfg.bits("blocks.14.attn.proj", 2) == Bits(16, 16)    # fp_layers "9-5"
    assert cfg.bits("blocks.9.mlp.fc2", 3) == Bits(16, 16)       # fp_layers "4-0"
    assert cfg.bits("blocks.0.attn.k", 0) == Bits(6, 6)          # the commented-out "# 19-15" 8-bit block is ignored
    summary = group_summary(cfg, cfg.rules)
    assert summary[0]["bits"] == {"W16A16": 6, "W6A6": 342, "W8A6": 16}
    assert summary[3]["bits"] == {"W16A16": 4, "W6A6": 360}


def test_vidit_q_round_trips_and_maps_onto_a_model_inventory() -> None:
    cfg = _vidit_q()
    files = export(cfg, "vidit-q")
    assert isinstance(files, dict)
    assert sorted(k for k in yaml.safe_load(files["weights"]) if k != "fp_layers") == ["14-10", "19-15", "4-0", "9-5"]
    assert import_config(files["weights"], "vidit-q", activations=files["activations"]) == cfg
    inventory = [*cfg.rules, "t_block.1", "final_layer.linear"]
    on_model = import_config((VIDITQ / "t20_weight_6_8_mp.yaml").read_text(), "vidit-q", layers=inventory)
    assert on_model.bits("final_layer.linear", 0) == Bits(16, 16)  # a layer the file does not list
    with pytest.raises(ConfigError, match="did you mean"):
        import_config((VIDITQ / "t20_weight_6_8_mp.yaml").read_text(), "vidit-q",
                      layers=[n.replace("attn_temp", "temporal") for n in cfg.rules])
    half = BitConfig(TimestepGroups(20), {"blocks.0.mlp.fc1": "W16A6"})
    with pytest.raises(ConfigError, match="whole layer"):
        export(half, "vidit-q")


# ---- the CLI: convert (no study) and import --protected ----------------------------------------------

def test_cli_convert_prints_layers_mean_bits_and_groups(tmp_path) -> None:
    from search.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["convert", str(MIXDQ / "weight_4.08.yaml"), "--from", "mixdq", "--model", "sdxl-unet"])
    assert out.exit_code == 0, out.output
    assert "794 layers" in out.output and "weighted by the parameters of sdxl-unet): 4.094" in out.output
    out = runner.invoke(app, ["convert", str(VIDITQ / "t20_weight_6_8_mp.yaml"), "--from", "vidit-q",
                              "--activations", str(VIDITQ / "t20_act_6_mp.yaml"), "--to", "json",
                              "-o", str(tmp_path / "c.json")])
    assert out.exit_code == 0, out.output
    assert "364 layers, 20 steps, 4 timestep group(s)" in out.output
    assert "group 0 steps 0-4: W16A16 x6, W6A6 x342, W8A6 x16" in out.output
    assert BitConfig.load(tmp_path / "c.json") == _vidit_q()
    out = runner.invoke(app, ["convert", str(VIDITQ / "t20_weight_6_8_mp.yaml"), "--from", "torchao"])
    assert out.exit_code == 2 and "valid: json, mixdq, step-policy, vidit-q, yaml" in out.output


def test_cli_import_mixdq_protected_option(tmp_path) -> None:
    from search.cli import app
    from search.spec import StudySpec
    from storage import Storage

    st = Storage(str(tmp_path / "s.db"))
    st.create_study("t", StudySpec(num_steps=4, timestep_groups=1).to_dict())
    st.add_layers("t", [{"fqn": n, "kind": "linear", "weight_shape": [8, 8], "params": 64, "macs": 640}
                        for n in ("a", "b")])
    (tmp_path / "w.yaml").write_text("model.a: 4\nmodel.b: 8\n")
    (tmp_path / "a.yaml").write_text("model.a: 8\n")
    runner = CliRunner()
    for reading in ("w16a16", "weights-only"):
        out = runner.invoke(app, ["import", "t", str(tmp_path / "w.yaml"), "--format", "mixdq", "--activations",
                                  str(tmp_path / "a.yaml"), "--protected", reading, "--db", str(st.url)])
        assert out.exit_code == 0, out.output
    got = {str(BitConfig.from_dict(c.config).rules["b"][0]) for c in st.list_candidates("t")}
    assert got == {"W16A16", "W8A16"}  # the protected layer b, read each way
    out = runner.invoke(app, ["import", "t", str(tmp_path / "w.yaml"), "--format", "json", "--protected", "w16a16",
                              "--db", str(st.url)])
    assert out.exit_code == 2 and "--protected goes with --format mixdq only" in out.output
