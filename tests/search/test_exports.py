"""Exports and imports: round trips (json, yaml, mixdq, step-policy), the real torchao consumer,
the ModelOpt structure, apply_exported on a tiny SD pipeline, and imports as study candidates."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from quant.config import BitConfig, Bits, ConfigError, TimestepGroups
from quant.errors import UnknownNameError
from quant.layers import quantizable_modules
from search.exports import export, import_config
from search.exports.importing import import_candidates
from search.exports.torchao_snippet import installed

LAYERS = {"conv_in": "conv", "blocks.1.proj": "linear", "blocks.11.proj": "linear", "proj": "linear",
          "blocks.1.attn.to_k": "linear", "conv_out": "conv"}


pytestmark = pytest.mark.usefixtures("one_thread")


def multi_group() -> BitConfig:
    return BitConfig(TimestepGroups.from_spans([(0, 1), (2, 5), (6, 7)]), {
        "_default": "W8A8", r"re:blocks\.\d+\.proj": ["W4A8", "W6A8", "W8A16"], "conv_in": "W16A16",
        "blocks.1.attn.to_k": ["W2A16", "W4A4", "W8A6"],
    })


def single_group() -> BitConfig:
    return BitConfig(TimestepGroups(8), {"_default": "W8A8", "proj": "W4A16", "conv_out": "W16A8",
                                         "blocks.11.proj": "W6A6", "conv_in": "W16A16"})


def test_json_and_yaml_round_trip() -> None:
    cfg = multi_group()
    for fmt in ("json", "yaml"):
        text = export(cfg, fmt)
        assert isinstance(text, str)
        assert import_config(text, fmt) == cfg
    assert json.loads(str(export(cfg, "json")))["format"] == "bitsearch.bitconfig"


def test_unknown_formats_and_options_are_rejected_with_the_valid_list() -> None:
    with pytest.raises(UnknownNameError, match="valid export formats: diffusion-step-policy, json, mixdq, modelopt"):
        export(single_group(), "onnx")
    with pytest.raises(UnknownNameError, match="one-way"):
        import_config("{}", "torchao")
    with pytest.raises(UnknownNameError, match="no option 'grop'; valid options: group, prefix"):
        export(single_group(), "mixdq", layers=LAYERS, grop=0)


def test_mixdq_round_trip_in_separate_files() -> None:
    cfg = single_group()
    files = export(cfg, "mixdq", layers=LAYERS)
    assert isinstance(files, dict)
    w, a = yaml.safe_load(files["weights"]), yaml.safe_load(files["activations"])
    # 16 bits are written by omission: MixDQ's kernel loader knows only 2, 4 and 8.
    assert w == {f"model.{n}": cfg.bits(n, 0).w for n in LAYERS if cfg.bits(n, 0).w != 16}
    assert a == {f"model.{n}": cfg.bits(n, 0).a for n in LAYERS if cfg.bits(n, 0).a != 16}
    assert a["model.conv_out"] == 8 and "model.conv_out" not in w and "model.proj" not in a
    assert list(w) == sorted(w)  # key order of MixDQ's own yaml.dump
    back = import_config(files["weights"], "mixdq", activations=files["activations"], num_steps=8, layers=LAYERS)
    assert back.resolve(LAYERS) == cfg.resolve(LAYERS)
    # Weights only: activations stay high precision; a layer listed nowhere runs W16A16.
    only_w = import_config("model.proj: 4\n", "mixdq", num_steps=8)
    assert only_w.bits("proj", 0) == Bits(4, 16) and only_w.bits("conv_in", 0) == Bits(16, 16)
    with pytest.raises(ConfigError, match="num_steps="):
        import_config(files["weights"], "mixdq")
    with pytest.raises(ConfigError, match="did you mean"):
        import_config("model.blocks.1.prj: 4\n", "mixdq", num_steps=8, layers=LAYERS)


def test_one_bitwidth_formats_refuse_per_timestep_configs_unless_a_group_is_chosen() -> None:
    cfg = multi_group()
    for fmt in ("mixdq", "torchao", "modelopt"):
        with pytest.raises(ConfigError, match=r"group=N"):
            export(cfg, fmt, layers=LAYERS)
    files = export(cfg, "mixdq", layers=LAYERS, group=1)
    assert isinstance(files, dict)
    assert yaml.safe_load(files["weights"])["model.blocks.11.proj"] == 6
    with pytest.raises(ConfigError, match="out of range"):
        export(cfg, "mixdq", layers=LAYERS, group=3)
    with pytest.raises(ConfigError, match="pass layers="):
        export(cfg, "mixdq", group=0)  # patterns cannot be expanded without the model's layers


def test_step_policy_round_trip() -> None:
    cfg = multi_group()
    policy = export(cfg, "step-policy")
    assert isinstance(policy, dict)
    assert [e["steps"] for e in policy["schedule"]] == [[0, 1], [2, 5], [6, 7]]
    assert policy["schedule"][1]["layers"][r"re:blocks\.\d+\.proj"] == "W6A8"
    assert import_config(policy, "step-policy") == cfg
    assert import_config(yaml.safe_dump(policy), "step-policy") == cfg
    # Listed per layer, it resolves to the same bits at every step.
    expanded = export(cfg, "step-policy", layers=LAYERS)
    assert import_config(expanded, "step-policy").resolve(LAYERS) == cfg.resolve(LAYERS)
    # Groups naming different keys: resolved per group with the layers, refused without.
    assert isinstance(expanded, dict)
    del expanded["schedule"][0]["layers"]["proj"]
    expanded["schedule"][0]["layers"]["_default"] = "W4A8"
    with pytest.raises(ConfigError, match="pass layers="):
        import_config(expanded, "step-policy")
    sparse = import_config(expanded, "step-policy", layers=LAYERS)
    assert sparse.bits("proj", 0) == Bits(4, 8) and sparse.bits("proj", 2) == cfg.bits("proj", 2)


def test_modelopt_lists_every_layer_once_with_its_bits() -> None:
    cfg = single_group()
    out = export(cfg, "modelopt", layers=LAYERS, legacy=False)
    assert isinstance(out, dict) and out["algorithm"] == "max"
    quant_cfg = out["quant_cfg"]
    assert quant_cfg[0] == {"quantizer_name": "*", "enable": False}
    names = [e["quantizer_name"] for e in quant_cfg]
    for fqn in LAYERS:
        b = cfg.bits(fqn, 0)
        for q, n in (("weight_quantizer", b.w), ("input_quantizer", b.a)):
            assert names.count(f"*{fqn}.{q}") == 1
            # ModelOpt semantics: every matching pattern applies in order, the last one wins.
            last = [e for e in quant_cfg if fnmatch.fnmatch(f"unet.{fqn}.{q}", e["quantizer_name"])][-1]
            assert {k: v for k, v in last.items() if k != "quantizer_name"} == (
                {"enable": False} if n == 16 else
                {"cfg": {"num_bits": n, "axis": 0 if q == "weight_quantizer" else None}, "enable": True})
    assert len(quant_cfg) == 1 + 2 * len(LAYERS)
    # ModelOpt < 0.44 reads the legacy dict: the same entries keyed by pattern, "default" first.
    legacy = export(cfg, "modelopt", layers=LAYERS, legacy=True)
    assert isinstance(legacy, dict)
    assert next(iter(legacy["quant_cfg"])) == "default"
    assert legacy["quant_cfg"]["*proj.weight_quantizer"] == {"num_bits": 4, "axis": 0, "enable": True}
    assert legacy["quant_cfg"]["*conv_out.weight_quantizer"] == {"enable": False}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Linear(64, 64) for _ in range(3)])
        self.proj = nn.Linear(64, 64)
        self.attn = nn.Linear(64, 64)
        self.out = nn.Linear(64, 32)
        self.conv_out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        for m in (*self.blocks, self.proj, self.attn, self.out):
            h = m(h)
        return self.conv_out(self.conv_in(x)).mean() + h.mean()


def test_torchao_snippet_quantizes_exactly_the_exported_layers() -> None:
    model = Tiny()
    kinds = {n: k for n, (_, k) in quantizable_modules(model).items()}
    cfg = BitConfig(TimestepGroups(4), {"blocks.0": "W8A8", "blocks.1": "W4A16", "blocks.2": "W4A8", "proj": "W8A16",
                                        "attn": "W16A8", "conv_in": "W4A16", "conv_out": "W8A8", "out": "W6A4"})
    snippet = export(cfg, "torchao", layers=kinds)
    assert isinstance(snippet, str)
    compile(snippet, "snippet.py", "exec")
    assert "#   attn  W16A8: torchao has no activation-only config" in snippet  # listed, not dropped
    assert "#   conv_out  W8A8: weights only" in snippet and "#   out  W6A4: activations at 8 bits" in snippet
    version, _ = installed()
    if version is None:
        pytest.skip("torchao is not importable here: snippet structure checked, quantize_ not run")
    scope: dict[str, object] = {}
    exec(snippet, scope)  # noqa: S102 - our own generated snippet
    before = {n: type(m.weight) for n, (m, _) in quantizable_modules(model).items()}
    x, h = torch.randn(1, 4, 8, 8), torch.randn(2, 64)
    scope["apply"](model)  # type: ignore[operator]
    changed = {n for n, (m, _) in quantizable_modules(model).items() if type(m.weight) is not before[n]}
    exported = set(scope["config"].fqn_to_config)  # type: ignore[attr-defined]
    assert exported == set(cfg.rules) - {"attn"}
    assert changed == exported
    assert torch.isfinite(model(x, h))
    ints = {n: type(m.weight).__name__ for n, (m, _) in quantizable_modules(model).items()}
    assert ints["blocks.0"] == "Int8Tensor" and ints["blocks.1"] == "IntxUnpackedToInt8Tensor"


# ---- apply_exported on a tiny SD pipeline built from configs ------------------------------------

def _build_sd():  # type: ignore[no-untyped-def]
    """tests/workloads/conftest.build_sd, imported by path (tests/ is not a package)."""
    path = Path(__file__).parents[1] / "workloads" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_workloads_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_sd


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):  # type: ignore[no-untyped-def]
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    path = _build_sd()(tmp_path_factory.mktemp("pipe") / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, steps: int = 2) -> torch.Tensor:  # type: ignore[no-untyped-def]
    g = torch.Generator("cpu").manual_seed(0)
    return pipe("a dog", num_inference_steps=steps, generator=g, output_type="latent").images


def test_apply_exported_generates_with_the_schedule_and_restores(sd_pipe, tmp_path) -> None:
    from search.exports.apply import apply_exported

    ref = _run(sd_pipe)
    names = list(quantizable_modules(sd_pipe.unet))
    cfg = BitConfig(TimestepGroups.from_spans([(0, 0), (1, 1)]), {"_default": ["W8A8", "W4A8"], names[0]: "W16A16"})
    path = tmp_path / "best.yaml"
    cfg.save(path)
    q = apply_exported(sd_pipe, path, calibration_prompts=["a cat"])  # 3 lines: load, apply, generate
    out = _run(sd_pipe)
    assert q.calls == 2 and torch.isfinite(out).all() and not torch.equal(out, ref)
    ran = q.qm.executed_labels()
    assert set(ran) == set(names[1:]) and all(r == {0: "int8-kernel", 1: "int8-kernel"} for r in ran.values())
    assert torch.equal(_run(sd_pipe), out)  # the step count restarts with every pipeline call
    with pytest.raises(ConfigError, match="num_inference_steps=2"):
        _run(sd_pipe, steps=3)
    q.remove()
    assert torch.equal(_run(sd_pipe), ref)


def test_apply_exported_reads_a_mixdq_pair(sd_pipe, tmp_path) -> None:
    from search.exports.apply import apply_exported

    names = list(quantizable_modules(sd_pipe.unet))
    files = export(BitConfig(TimestepGroups(1), {n: "W8A16" for n in names[:3]}), "mixdq")
    assert isinstance(files, dict)
    (tmp_path / "w.yaml").write_text(files["weights"])
    (tmp_path / "a.yaml").write_text(files["activations"])
    q = apply_exported(sd_pipe, tmp_path / "w.yaml", activations=tmp_path / "a.yaml")
    try:
        assert torch.isfinite(_run(sd_pipe, steps=3)).all()  # one group: any step count
        assert set(q.qm.layers) == set(names[:3])
    finally:
        q.remove()


# ---- imports as candidates, and the CLI ---------------------------------------------------------

@pytest.fixture
def db_study(tmp_path):  # type: ignore[no-untyped-def]
    from search.spec import StudySpec
    from storage import Storage

    st = Storage(str(tmp_path / "s.db"))
    st.create_study("t", StudySpec(num_steps=8, timestep_groups=2).to_dict())
    st.add_layers("t", [{"fqn": n, "kind": k, "weight_shape": [8, 8], "params": 64, "macs": 640}
                        for n, k in LAYERS.items()])
    return st


def test_import_candidates_with_origin_import_idempotent(db_study, tmp_path) -> None:
    st = db_study
    cfg = single_group()
    (tmp_path / "c.json").write_text(cfg.to_json())
    files = export(cfg, "mixdq", layers=LAYERS)
    assert isinstance(files, dict)
    (tmp_path / "w.yaml").write_text(files["weights"])
    (tmp_path / "a.yaml").write_text(files["activations"])
    first = import_candidates(st, "t", [tmp_path / "c.json"], "json")
    mix = import_candidates(st, "t", [tmp_path / "w.yaml"], "mixdq", activations=tmp_path / "a.yaml")
    assert [c for _, c in first + mix] == [True, True]
    again = import_candidates(st, "t", [tmp_path / "c.json"], "json")
    assert again == [(first[0][0], False)]
    cands = st.list_candidates("t")
    assert len(cands) == 2 and all(str(getattr(c.origin, "value", c.origin)) == "import" for c in cands)
    for c in cands:  # on the study's groups, with the exported bits in every group
        back = BitConfig.from_dict(c.config)
        assert back.groups == TimestepGroups.uniform(8, 2)
        assert all(back.resolve(LAYERS)[n] == (cfg.bits(n, 0),) * 2 for n in LAYERS)
    (tmp_path / "bad.json").write_text(multi_group().to_json())
    with pytest.raises(ConfigError, match="differ from the study"):
        import_candidates(st, "t", [tmp_path / "bad.json"], "json")


def test_cli_import_and_export_formats(db_study, tmp_path) -> None:
    from search.cli import app

    st, db = db_study, str(db_study.url)
    runner = CliRunner()
    (tmp_path / "c.yaml").write_text(single_group().to_yaml())
    out = runner.invoke(app, ["import", "t", str(tmp_path / "c.yaml"), "--format", "yaml", "--db", db])
    assert out.exit_code == 0 and "added" in out.output, out.output
    out = runner.invoke(app, ["import", "t", str(tmp_path / "c.yaml"), "--format", "yaml", "--db", db])
    assert "already in the study" in out.output
    cand = st.claim("t", "me")
    st.complete(cand.id, "me", metrics={"psnr_db": 30.0}, backend="int8", machine="m", run_labels={"int8-kernel": 5})
    for fmt, name in (("mixdq", "m.yaml"), ("torchao", "q.py"), ("modelopt", "mo.json"), ("step-policy", "p.yaml")):
        out = runner.invoke(app, ["export", "t", "--candidate", str(cand.id), "--format", fmt, "-o",
                                  str(tmp_path / name), "--db", db])
        assert out.exit_code == 0, out.output
    assert yaml.safe_load((tmp_path / "m_act.yaml").read_text())["model.conv_out"] == 8
    assert import_config((tmp_path / "p.yaml").read_text(), "step-policy").groups == TimestepGroups.uniform(8, 2)
    mo = json.loads((tmp_path / "mo.json").read_text())["quant_cfg"]
    assert [e["cfg"]["num_bits"] for e in mo if e["quantizer_name"] == "*proj.weight_quantizer"] == [4]
    out = runner.invoke(app, ["export", "t", "--candidate", str(cand.id), "--format", "onnx", "-o", "x", "--db", db])
    assert out.exit_code == 2 and "valid: diffusion-step-policy, json, mixdq" in out.output
