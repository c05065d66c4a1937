"""Train the Fashion-MNIST class-conditional UNet and its classifier; write the shipped weights.

    python -m workloads.fashion.train    # 29.6 min measured on a busy 2-core CPU (classifier 7, UNet 23); ~25 idle

Needs the data (see ``workloads.fashion.data``: ``apt-get install dataset-fashion-mnist``). Seeded, CPU,
one thread. Writes to ``workloads/fashion/weights/``:

* ``unet/``: a bare class-conditional diffusers model directory, ``config.json`` +
  ``diffusion_pytorch_model.safetensors`` (fp16 on disk) + ``scheduler_config.json`` (the DDIM
  schedule it was trained with). ``UNet2DModel`` with ``num_class_embeds=11``: classes 0..9 and the
  null class 10 for classifier-free guidance (10% of labels are dropped to it in training).
* ``classifier/``: a ``workloads.classifier.ImageClassifier`` trained on the same train split, used
  to judge samples; its held-out accuracy on the 10,000 test images is recorded in its config.
* ``train_info.json``: the run's settings and timings.

The DDPM loss, warmup-cosine schedule and EMA are the built-in model's (``workloads.builtin.train``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from ..builtin.train import epsilon_loss, train_with_ema
from ..classifier import accuracy, save_classifier, train_classifier
from .data import load_split

if TYPE_CHECKING:
    from diffusers.models import UNet2DModel  # the top-level name is a lazy dummy to mypy

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
NULL_CLASS = 10  # the classifier-free-guidance "no class" label: the last class embedding

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 96),
    layers_per_block=1,
    attention_head_dim=16,
    norm_num_groups=8,
    num_class_embeds=NULL_CLASS + 1,
)

# Cosine schedule (alpha_bar(T-1) ~ 1e-5); DDIM samples with trailing spacing and x0 clipped to [-1, 1].
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
    clip_sample=True, clip_sample_range=1.0, timestep_spacing="trailing",
)


def build_unet() -> UNet2DModel:
    from diffusers.models import UNet2DModel

    return UNet2DModel(**UNET_CONFIG)


def save_unet(unet: UNet2DModel, out: Path) -> Path:
    """``unet.save_pretrained`` (fp16 safetensors) + the DDIM ``scheduler_config.json``, in ``out``."""
    import copy

    from diffusers import DDIMScheduler

    copy.deepcopy(unet).half().save_pretrained(str(out), safe_serialization=True)  # loads back as float32
    DDIMScheduler.from_config(SCHEDULER_CONFIG).save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--classifier-epochs", type=float, default=4.0)
    ap.add_argument("--skip-classifier", action="store_true", help="keep the existing classifier/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--ckpt-dir", type=Path, default=None, help="also write EMA snapshots to CKPT_DIR/ckpt-STEP/")
    ap.add_argument("--ckpt-every", type=int, default=500)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # shared machine: 1 thread is also the deterministic setting
    t_start = time.time()
    train, test = load_split("train"), load_split("test")
    x01, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    run_keys = ("steps", "batch", "lr", "ema", "cfg_drop", "classifier_epochs", "seed")  # not paths: no machine's dirs
    info: dict[str, Any] = dict({k: getattr(args, k) for k in run_keys}, train_images=len(y))

    if not args.skip_classifier:
        clf = train_classifier(x01, y, epochs=args.classifier_epochs, seed=args.seed + 1, num_classes=10)
        acc = accuracy(clf, torch.from_numpy(test.images), torch.from_numpy(test.labels))
        print(f"classifier held-out accuracy {acc:.4f} on {len(test)} test images [{time.time() - t_start:.0f}s]",
              flush=True)
        save_classifier(clf, args.out / "classifier", dict(heldout_accuracy=round(acc, 4), seed=args.seed + 1,
                                                           epochs=args.classifier_epochs, test_images=len(test)))
        info["classifier_seconds"] = round(time.time() - t_start, 1)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    from diffusers import DDIMScheduler

    abar = DDIMScheduler.from_config(SCHEDULER_CONFIG).alphas_cumprod.float()
    unet = build_unet()
    info["params"] = n_params = sum(p.numel() for p in unet.parameters())
    print(f"unet: {n_params / 1e6:.2f} M parameters", flush=True)
    x = x01 * 2 - 1

    def batch_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(x), (args.batch,), generator=gen)
        labels = y[idx].clone()
        labels[torch.rand(args.batch, generator=gen) < args.cfg_drop] = NULL_CLASS
        return epsilon_loss(lambda xt, t: unet(xt, t, class_labels=labels).sample, x[idx], abar, gen)

    t_unet = time.time()
    emas = train_with_ema(
        [unet], batch_loss, steps=args.steps, lr=args.lr, ema=args.ema,
        ckpt_every=args.ckpt_every if args.ckpt_dir else 0,
        checkpoint=lambda step, emas: print(
            f"  checkpoint -> {save_unet(cast('UNet2DModel', emas[0]), args.ckpt_dir / f'ckpt-{step}')}"),
    )
    save_unet(cast("UNet2DModel", emas[0]), args.out / "unet")
    info.update(unet_seconds=round(time.time() - t_unet, 1), total_seconds=round(time.time() - t_start, 1))
    (args.out / "train_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    print(f"done: {args.steps} steps, total {(time.time() - t_start) / 60:.1f} min -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
