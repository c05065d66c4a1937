"""Sample grids: full precision (top row) vs a study's chosen config (bottom row), one PNG.

The study makes its grid (at the end of `Study.run`, or `make_samples` when asked) and stores it as
an artifact of kind `samples` of the chosen candidate; readers (the HTTP API, the study page) only
read it with `stored_samples`. A read never runs the model: on a server with open reads an
anonymous GET must not cost seconds of CPU or write to the database.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from search.front import FrontPoint, chosen_point

if TYPE_CHECKING:
    from torch import Tensor

    from search.study import Study

SAMPLES_KIND = "samples"
MAX_SAMPLES = 4
_make_lock = threading.Lock()  # two requests for the same grid in one process make it once


def stored_samples(study: Study, chosen: FrontPoint) -> bytes | None:
    """The stored grid of `chosen` (a FrontPoint), or None when none was made. Never computes."""
    for art in study.storage.list_artifacts(study.name, kind=SAMPLES_KIND, candidate_id=chosen.candidate_id):
        data: bytes | None = study.storage.get_artifact(art.id).data
        if data is not None:
            return data
    return None


def make_samples(study: Study, progress: Callable[[str], None] = print) -> bytes | None:
    """Make and store the grid of the study's chosen config unless it is stored already; returns it
    (None while no candidate was evaluated). Runs the model: full precision, then quantized."""
    with _make_lock:
        chosen = chosen_point(study.front_points())
        if chosen is None:
            return None
        stored = stored_samples(study, chosen)
        if stored is not None:
            return stored
        from quant.apply import quantized
        from quant.config import BitConfig

        progress(f"samples: full precision vs candidate {chosen.candidate_id}, {MAX_SAMPLES} images")
        wl = study.workload
        batch = wl.batch(min(MAX_SAMPLES, study.spec.eval_samples))
        reference = wl.generate(batch).images
        with quantized(wl.denoiser, BitConfig.from_dict(chosen.config), study.spec.backend,
                       study.cache.activation_ranges(progress=lambda _m: None)) as qm:
            test = wl.generate(batch, on_step=qm.set_step).images
        png = grid_png([reference, test])
        study.storage.put_artifact(study.name, SAMPLES_KIND, f"samples-{chosen.candidate_id}.png", data=png,
                                   media_type="image/png", candidate_id=chosen.candidate_id)
        return png


def grid_png(rows: list[Tensor], pad: int = 2) -> bytes:
    """Images in [0, 1] of shape (B, C, H, W), one row per tensor, as a PNG."""
    import numpy as np
    from PIL import Image

    arrays = []
    for images in rows:
        a = images.detach().float().clamp(0, 1).cpu().numpy()
        if a.shape[1] == 1:
            a = np.repeat(a, 3, axis=1)
        arrays.append((a[:, :3].transpose(0, 2, 3, 1) * 255).round().astype(np.uint8))
    n, h, w = arrays[0].shape[0], arrays[0].shape[1], arrays[0].shape[2]
    canvas = np.full((len(arrays) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, a in enumerate(arrays):
        for c in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y:y + h, x:x + w] = a[c]
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()
