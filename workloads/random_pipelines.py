"""Random-weight diffusers pipelines built from configs and saved to disk with `save_pretrained`
(safetensors), with no hub: tokenizers are built from an alphabet, every model from its config.

The tests build tiny ones (`tests/workloads/conftest.py`) to check plumbing (loading, seeds, step hooks,
quantization), never image quality; `bench/scale.py` builds real-size ones from the shipped configs
(`workloads/model_configs/`: SD1.5's and SDXL's UNets, PixArt-alpha's transformer; real-width text
encoders with fewer layers) to time a whole study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Token lengths: CLIP's real 77 (the SD pipelines pad every prompt to the tokenizer's length);
# PixArt pads to its own max_sequence_length (120) whatever the tokenizer says.
CLIP_LENGTH = 77
T5_LENGTH = 120


def _clip_tokenizer() -> object:
    """A byte-level CLIP tokenizer with no merges: every character is a token (vocab 514)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_LENGTH)


def _clip_text(projection: bool, hidden: int = 32, layers: int = 2) -> torch.nn.Module:
    """A CLIP text encoder over `_clip_tokenizer`'s vocabulary; hidden=768, layers=12 is CLIP ViT-L's size."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=514, hidden_size=hidden, intermediate_size=37 if hidden == 32 else 4 * hidden,
        num_attention_heads=4 if hidden == 32 else hidden // 64, num_hidden_layers=layers,
        max_position_embeddings=CLIP_LENGTH, projection_dim=hidden, bos_token_id=512, eos_token_id=513,
        pad_token_id=513,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _t5_tokenizer() -> object:
    """A Unigram T5 tokenizer over single characters (no sentencepiece model needed)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'-"]
    pieces += [("\u2581" + c, -1.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_LENGTH)


def _vae() -> Any:  # noqa: ANN401 (an AutoencoderKL; diffusers' models are untyped)
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=2, sample_size=16,
    )


def build_sd(path: Path, v2: bool = False, unet_config: dict[str, object] | None = None, text_layers: int = 2) -> Path:
    """Stable Diffusion 1.x-style: UNet2DConditionModel + CLIP text encoder + DDIM, 16x16 images.
    `v2`: the 2.x differences (linear attention projections, per-block head dims, v-prediction).
    `unet_config`: a real UNet's config instead of the tiny one (e.g. `model_configs/sd15-unet.json`);
    the text encoder then gets its cross-attention width and `text_layers` layers."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    if unet_config is None:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            attention_head_dim=(2, 4) if v2 else 4, norm_num_groups=4, use_linear_projection=v2,
        )
    else:
        unet = UNet2DConditionModel.from_config(unet_config)
    hidden = int(getattr(unet, "config").cross_attention_dim)  # noqa: B009 (a FrozenDict mypy cannot see)
    pipe: Any = StableDiffusionPipeline(  # Any: diffusers' mixins are untyped
        vae=_vae(), text_encoder=_clip_text(False, hidden, text_layers), tokenizer=_clip_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                prediction_type="v_prediction" if v2 else "epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_sdxl(path: Path, unet_config: dict[str, object] | None = None, text_layers: int = 2) -> Path:
    """SDXL-style: two CLIP text encoders (the second with projection), text_time conditioning.
    `unet_config`: a real UNet's config instead of the tiny one (e.g. `model_configs/sdxl-unet.json`);
    the text encoders then get SDXL's widths (CLIP ViT-L 768 and OpenCLIP bigG 1280) and `text_layers`
    layers each."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    if unet_config is None:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64, attention_head_dim=4,
            norm_num_groups=4, transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, use_linear_projection=True,
        )
        widths = (32, 32)
    else:
        unet = UNet2DConditionModel.from_config(unet_config)
        widths = (768, 1280)  # their concatenation is the UNet's cross_attention_dim (2048)
    pipe: Any = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip_text(False, widths[0], text_layers),
        text_encoder_2=_clip_text(True, widths[1], text_layers),
        tokenizer=_clip_tokenizer(), tokenizer_2=_clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                         timestep_spacing="leading", steps_offset=1),
    )
    pipe.save_pretrained(path)
    return path


def build_pixart(path: Path, sigma: bool = False, transformer_config: dict[str, object] | None = None,
                 text_layers: int = 2) -> Path:
    """PixArt-alpha-style: PixArtTransformer2DModel (adaLN-single DiT) + T5 encoder + DPM-Solver++.
    `sigma`: the same components in a PixArtSigmaPipeline. `transformer_config`: a real transformer's
    config instead of the tiny one (e.g. `model_configs/pixart-alpha.json`); the T5 encoder then gets
    T5-XXL's width (4096, the transformer's caption_channels) with `text_layers` layers and a narrow
    feed-forward (1024; T5-XXL's is 10240): the text encoder runs once per image, not per step."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    if transformer_config is None:
        transformer = PixArtTransformer2DModel(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
            caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6,
        )
        width, ff, head, heads = 32, 37, 8, 4
    else:
        transformer = PixArtTransformer2DModel.from_config(transformer_config)
        width, ff, head, heads = int(str(transformer_config["caption_channels"])), 1024, 64, 64
    token_ids: dict[str, Any] = {"decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}  # PretrainedConfig's
    t5 = T5EncoderModel(T5Config(vocab_size=70, d_model=width, d_ff=ff, d_kv=head, num_heads=heads,
                                 num_layers=text_layers, relative_attention_num_buckets=8, **token_ids))
    pipe: Any = (PixArtSigmaPipeline if sigma else PixArtAlphaPipeline)(
        tokenizer=_t5_tokenizer(), text_encoder=t5, vae=_vae(), transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    pipe.save_pretrained(path)
    return path
