"""Workloads: a denoiser + sampler + prompts/seeds + metrics (see issue: built-in workload).

- `workloads.base`: the `Workload` contract, `Batch`/`Generation`, `WorkloadError`, the registry
  (`load_workload(name_or_path, **options)`) and the seed ranges of the `calibration`/`eval` splits.
- `builtin`: the small text-to-image model trained and shipped with bitsearch.
- `diffusers` (`workloads.diffusers_workload`): any local diffusers pipeline directory: text-to-image
  (SD 1.x/2.x, SDXL, PixArt-alpha/Sigma, ...), unconditional (DDPM, DDIM, LDM) or class-conditional
  (DiT); its `unet`/`transformer` is the denoiser that gets quantized.
- `class-conditional` (`workloads.class_conditional`): a bare class-conditional model directory
  (UNet2DModel with class embeddings, DiTTransformer2DModel) with its scheduler config, sampled by our
  own loop; `workloads.classifier` reads a user's classifier for label accuracy.
- `fashion/`: a class-conditional Fashion-MNIST UNet trained and shipped with bitsearch (such a directory).
- `load_model(model, weights=...)`: what `--model` names for commands that need a denoiser but no study.
- `random_pipelines`: random-weight pipelines built from configs (tests, `bench/scale.py`).

Nothing is imported here: diffusers and transformers take seconds to import, and the CLI should not
pay for them before it needs a workload.
"""
