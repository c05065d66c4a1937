"""Workloads: a denoiser + sampler + prompts/seeds + metrics (see issue: built-in workload).

- `workloads.base`: the `Workload` contract, `Batch`/`Generation`, `WorkloadError`, the registry
  (`load_workload(name_or_path, **options)`) and the seed ranges of the `calibration`/`eval` splits.
- `builtin`: the small text-to-image model trained and shipped with bitsearch.
- `diffusers` (`workloads.diffusers_workload`): any local diffusers pipeline directory (SD 1.x/2.x,
  SDXL, PixArt-alpha/Sigma, ...); its `unet`/`transformer` is the denoiser that gets quantized.

Nothing is imported here: diffusers and transformers take seconds to import, and the CLI should not
pay for them before it needs a workload.
"""
