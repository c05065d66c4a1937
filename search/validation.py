"""How well a study's sensitivity scores rank REAL degradation: `sensitivity.measure` on held-out
prompts and seeds (single layers and random mixed configs, quantized with the study's backend; one
measurement serves every estimator), then Spearman/Kendall per metric. The latest result is stored as
the study's `validation` artifact, which the CLI's `status`, the API and the page read."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.cache import StudyCache
    from search.study import Study

KIND = "validation"
Result = dict[str, Any]  # JSON: estimator, metric, counts, correlations


def validate(study: Study, progress: Callable[[str], None] = print, *, n_single: int = 12, n_mixed: int = 12,
             n_images: int = 4) -> list[Result]:
    """Measure, correlate, store and return one result per score set of the study."""
    from sensitivity import correlate, measure

    layers = study.layers(progress)
    scores = study.cache.scores(layers, progress)
    bits = sorted({b for s in scores for (_, _, b) in s.values})
    progress(f"validation: {n_single} single-layer and {n_mixed} mixed configs x {n_images} held-out images")
    measured = measure(study.workload, [x.fqn for x in layers], bits, study.spec.groups, n_single=n_single,
                       n_mixed=n_mixed, n_images=n_images, seed=study.spec.seed, backend=study.spec.backend)
    results: list[Result] = [correlate(s, measured).to_dict() for s in scores]
    study.cache.put_json(KIND, results)  # type: ignore[arg-type]
    return results


def stored_validation(cache: StudyCache) -> list[Result] | None:
    """The latest stored validation, or None (never measures)."""
    stored = cache.get_json(KIND)
    return None if not isinstance(stored, list) else [r for r in stored if isinstance(r, dict)]
