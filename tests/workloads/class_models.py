"""Tiny random class-conditional models built from configs and saved the way a user's are (safetensors):
a bare UNet2DModel directory with its scheduler, a DiTPipeline directory, and an image classifier.
Helpers for test files; the models check plumbing, never image quality."""

from __future__ import annotations

import json
from pathlib import Path

import torch

NUM_CLASS_EMBEDS = 5  # classes 0..3 and the null class 4 of classifier-free guidance
DIT_LABELS = {"0": "cat", "1": "dog", "2": "bird"}  # the id2label a DiTPipeline's model_index.json holds


def build_class_unet(path: Path, scheduler: str | None = ".") -> Path:
    """`unet.save_pretrained(path)` of an 8x8 one-channel UNet2DModel with NUM_CLASS_EMBEDS labels, and a
    DDIMScheduler saved in `path / scheduler` (None: no scheduler)."""
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                       norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), num_class_embeds=NUM_CLASS_EMBEDS)
    unet.save_pretrained(path)
    if scheduler is not None:
        DDIMScheduler(num_train_timesteps=1000).save_pretrained(path / scheduler)
    return path


def build_dit_pipeline(path: Path, num_embeds: int = 1000) -> Path:
    """A DiTPipeline (2-layer DiT on 4x4x4 latents, learned sigma, 8x8 RGB through a tiny VAE) with
    DIT_LABELS as its id2label, as the hub's DiT pipelines ship it."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=2, sample_size=4, patch_size=2, norm_num_groups=2,
                                num_embeds_ada_norm=num_embeds)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=2, sample_size=8)
    DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "id2label": DIT_LABELS}))
    return path


def build_classifier(path: Path, in_channels: int = 1, resolution: int = 8, num_classes: int = 4) -> Path:
    """A random `workloads.classifier.ImageClassifier` saved as config.json + model.safetensors."""
    from workloads.classifier import ImageClassifier, save_classifier

    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    return save_classifier(ImageClassifier(in_channels, resolution, num_classes, width=8, feat_dim=16), path)
