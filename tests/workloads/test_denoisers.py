"""Diffusers denoisers: loading, built-in configs and example inputs; inventories of the built-in models
counted against module traversal, MACs against known figures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from quant.layers import Layer, inventory, totals
from workloads.denoisers import ModelLoadError, builtin_names, example_inputs, load_denoiser

torch.set_num_threads(1)  # the test machine is shared

BUILTINS = ["sd15-unet", "sdxl-unet", "dit-xl-2", "pixart-alpha"]


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[nn.Module, list[Layer], float]]:
    """Each built-in model on meta with its default inventory and the seconds build + inventory took."""
    import diffusers  # noqa: F401  (import cost kept out of the timings)

    out = {}
    for name in BUILTINS:
        start = time.perf_counter()
        model = load_denoiser(name)
        layers = inventory(model, example_inputs(model))
        out[name] = (model, layers, time.perf_counter() - start)
    return out


def test_builtin_names_are_the_shipped_configs() -> None:
    assert builtin_names() == sorted(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_inventory_matches_module_traversal(built: dict, name: str) -> None:
    model, layers, _ = built[name]
    assert next(model.parameters()).device.type == "meta"
    modules = list(model.modules())
    linear = sum(isinstance(m, nn.Linear) for m in modules)
    conv = sum(isinstance(m, nn.Conv2d) for m in modules)
    t = totals(layers)
    assert (t["linear"], t["conv"], t["layers"]) == (linear, conv, linear + conv)
    names = dict(model.named_modules())
    for layer in layers:  # addressed by FQN, and the FQN leads back to the layer
        assert tuple(names[layer.fqn].weight.shape) == layer.weight_shape
        assert layer.params == names[layer.fqn].weight.numel()
    # Every quantizable layer of these denoisers runs in a forward.
    assert [x.fqn for x in layers if x.macs == 0] == []


def _weight_params_outside_norms(model: nn.Module) -> int:
    norms = (nn.GroupNorm, nn.LayerNorm)
    return sum(
        p.numel()
        for mod in model.modules()
        if not isinstance(mod, norms)
        for pname, p in mod.named_parameters(recurse=False)
        if pname != "bias"
    )


def test_sd15_unet_totals(built: dict) -> None:
    model, layers, _ = built["sd15-unet"]
    t = totals(layers)
    assert (t["linear"], t["conv"]) == (184, 98)
    assert t["params"] == pytest.approx(859.5e6, rel=0.01)  # the published 860M UNet
    assert t["params"] == pytest.approx(_weight_params_outside_norms(model), rel=0.02)
    # ~340 GMACs per UNet call at a 64x64 latent (512 px), without the attention score matmuls.
    assert 330 < t["gmacs"] < 350


def test_sdxl_unet_is_fast_on_meta_and_plausible(built: dict) -> None:
    model, layers, seconds = built["sdxl-unet"]
    assert seconds < 15  # ~1 s here; the full model would be 10 GB of fp32 weights
    t = totals(layers)
    assert t["params"] == pytest.approx(2.567e9, rel=0.01)
    assert t["params"] == pytest.approx(_weight_params_outside_norms(model), rel=0.02)
    assert 2900 < t["gmacs"] < 3100  # 128x128 latent (1024 px)
    fqns = {x.fqn for x in layers}
    assert "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k" in fqns  # 10 blocks deep
    assert "add_embedding.linear_1" in fqns  # fed by text_embeds + time_ids


def test_dit_xl_2_matches_paper_flops(built: dict) -> None:
    _, layers, _ = built["dit-xl-2"]
    # DiT paper: 118.6 GFLOPs (counted as MACs) for XL/2 at 256 px, including ~4.2 G of attention
    # score matmuls (2 * 256^2 tokens * 1152 * 28 layers) that are not layers.
    assert 110 < totals(layers)["gmacs"] < 118.6


def test_pixart_runs_additional_conditions(built: dict) -> None:
    model, layers, _ = built["pixart-alpha"]
    assert model.use_additional_conditions  # sample_size 128: resolution and aspect ratio embedded
    macs = {x.fqn: x.macs for x in layers}
    assert macs["adaln_single.emb.resolution_embedder.linear_1"] > 0
    assert macs["caption_projection.linear_1"] == 120 * 4096 * 1152  # T5 tokens * in * out


def test_macs_scale_with_batch_and_resolution() -> None:
    model = load_denoiser("sd15-unet")
    base = totals(inventory(model, example_inputs(model)))["macs"]
    assert totals(inventory(model, example_inputs(model, batch=2)))["macs"] == 2 * base
    small = totals(inventory(model, example_inputs(model, resolution=32)))["macs"]
    assert base / 4.5 < small < base / 3  # convs scale 4x, text cross-attention k/v does not


# --- tiny real models: example_inputs must satisfy each family's real forward -----------------------

TINY_UNET = dict(
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=12,
    attention_head_dim=2,
)


def _tiny(kind: str) -> nn.Module:
    import diffusers

    if kind == "unet":
        return diffusers.UNet2DConditionModel(**TINY_UNET)
    if kind == "unet-text-time":  # SDXL-style micro-conditioning
        cfg = TINY_UNET | dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=6 * 4 + 10,
        )
        return diffusers.UNet2DConditionModel(**cfg)
    if kind == "unet2d":
        return diffusers.UNet2DModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=4,
        )
    if kind == "dit":
        return diffusers.DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=4,
            in_channels=4,
            out_channels=8,
            num_layers=1,
            sample_size=8,
            num_embeds_ada_norm=10,
        )
    if kind == "pixart":  # inner dim divisible by 3: the size embedding splits it in 3
        return diffusers.PixArtTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=6,
            in_channels=4,
            out_channels=8,
            num_layers=1,
            sample_size=8,
            cross_attention_dim=12,
            caption_channels=10,
            use_additional_conditions=True,
        )
    if kind == "transformer2d":  # plain spatial transformer with cross-attention, no timestep
        return diffusers.Transformer2DModel(
            num_attention_heads=2,
            attention_head_dim=4,
            in_channels=8,
            norm_num_groups=4,
            num_layers=1,
            cross_attention_dim=6,
            sample_size=8,
        )
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["unet", "unet-text-time", "unet2d", "dit", "pixart", "transformer2d"])
def test_example_inputs_run_real_forward(kind: str) -> None:
    torch.manual_seed(0)
    model = _tiny(kind).eval()
    layers = inventory(model, example_inputs(model, batch=2, resolution=8))
    assert layers and all(x.macs > 0 for x in layers)


def test_example_inputs_rejects_unknown_models() -> None:
    with pytest.raises(ValueError, match="no example inputs for Linear"):
        example_inputs(nn.Linear(2, 2))


# --- load_denoiser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_unet(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = _tiny("unet")
    path = tmp_path_factory.mktemp("unet")
    model.save_pretrained(path)  # safetensors by default
    return model, path


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_model_dir_with_weights(saved_unet: tuple[nn.Module, Path]) -> None:
    model, path = saved_unet
    loaded = load_denoiser(str(path))
    assert type(loaded).__name__ == "UNet2DConditionModel"
    assert next(loaded.parameters()).device.type == "cpu"
    assert _same_weights(model, loaded)


def test_load_pipeline_dir(saved_unet: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, path = saved_unet
    (tmp_path / "unet").mkdir()
    for f in path.iterdir():
        (tmp_path / "unet" / f.name).write_bytes(f.read_bytes())
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert _same_weights(model, load_denoiser(str(tmp_path)))
    # Inspection never needs the weights.
    assert next(load_denoiser(str(tmp_path), device="meta").parameters()).device.type == "meta"


def test_load_weights_variant(saved_unet: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, _ = saved_unet
    model.save_pretrained(tmp_path, variant="fp16")
    assert _same_weights(model, load_denoiser(str(tmp_path)))


def test_config_only_dir_builds_on_meta(saved_unet: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, path = saved_unet
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    loaded = load_denoiser(str(tmp_path))
    assert next(loaded.parameters()).device.type == "meta"
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]


def _write(path: Path, name: str, data: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "not a directory; expected a diffusers pipeline directory"),
        (lambda p: p, "has neither model_index.json nor config.json"),
        (
            lambda p: _write(p, "model_index.json", {"vae": ["diffusers", "AutoencoderKL"]}),
            "pipeline has no denoiser; expected a 'unet' or 'transformer'",
        ),
        (lambda p: _write(p, "config.json", {"in_channels": 4}), 'no "_class_name"'),
        (lambda p: _write(p, "config.json", {"_class_name": "NoSuchModel"}), "not a diffusers model class"),
        (lambda p: _write(p, "config.json", {"_class_name": "DDPMScheduler"}), "not a diffusers model class"),
        (lambda p: _write(p, "config.json", []), "expected a JSON object"),
    ],
)
def test_load_errors_are_one_clear_line(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError, match=message) as info:
        load_denoiser(str(make(tmp_path)))
    assert "\n" not in str(info.value)


def test_pickled_weights_are_refused(saved_unet: tuple[nn.Module, Path], tmp_path: Path) -> None:
    _, path = saved_unet
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="only pickled weights"):
        load_denoiser(str(tmp_path))
    assert load_denoiser(str(tmp_path), device="meta")  # inspection never reads them
