"""Workloads: a denoiser + sampler + prompts/seeds + metrics (see issue: built-in workload)."""
