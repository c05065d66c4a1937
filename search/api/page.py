"""The per-study web page: Pareto front (plotly.js, served locally), bits heat map, FP vs quantized samples."""

from __future__ import annotations

import json
from functools import cache
from html import escape
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import quote

from quant.quantities import quantity
from search.front import FrontPoint, chosen_point, default_objectives, pareto
from search.samples import stored_samples
from search.validation import stored_validation

if TYPE_CHECKING:
    from search.study import Study

ORIGIN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
BIT_COLOURS = {2: "#d73027", 3: "#f46d43", 4: "#fdae61", 5: "#fee08b", 6: "#d9ef8b", 8: "#a6d96a", 16: "#1a9850"}


@cache
def plotly_js() -> bytes | None:
    """The plotly.min.js that ships inside the `plotly` package (None when plotly is not installed)."""
    try:
        return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def _script_json(value: object) -> str:
    """JSON safe to embed in a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _plot(points: list[FrontPoint], chosen: FrontPoint) -> str:
    objectives = default_objectives(points)  # quality vs measured latency and memory (or a proxy)
    front = pareto(points, objectives)
    quality, cost, *others = (quantity(o) for o in objectives)
    origins = sorted({p.origin for p in points})

    def xy(pts: list[FrontPoint]) -> dict[str, list[float | None]]:
        return {"x": [p.value(cost.name) for p in pts], "y": [p.metrics.get(quality.name) for p in pts]}

    traces: list[dict[str, object]] = []
    for i, origin in enumerate(origins):
        pts = [p for p in points if p.origin == origin]
        traces.append({"type": "scatter", "mode": "markers", "name": origin, **xy(pts),
                       "text": [f"candidate {p.candidate_id}" for p in pts],
                       "marker": {"size": 9, "color": ORIGIN_COLOURS[i % len(ORIGIN_COLOURS)]}})
    traces.append({"type": "scatter", "mode": "markers", "name": f"Pareto front ({', '.join(objectives)})",
                   "marker": {"size": 14, "symbol": "circle-open", "color": "black"},
                   **xy(front), "text": [f"candidate {p.candidate_id}" for p in front]})
    traces.append({"type": "scatter", "mode": "markers", "name": f"chosen (candidate {chosen.candidate_id})",
                   **xy([chosen]), "marker": {"size": 16, "symbol": "star", "color": "#d62728"}})
    layout = {"xaxis": {"title": {"text": cost.label}}, "yaxis": {"title": {"text": quality.label}},
              "margin": {"t": 20}, "height": 420}
    # every metric measured on the front (the full evaluation's only on promoted candidates)
    columns = [cost, *others, quality,
               *(quantity(m) for m in sorted({m for p in front for m in p.metrics} - {quality.name}))]
    rows = "".join(
        f"<tr><td>{p.candidate_id}</td><td>{escape(p.origin)}</td>"
        + "".join(f"<td>{_maybe(p.value(q.name) if p.has(q.name) else None)}</td>" for q in columns)
        + f"<td>{'yes' if p.measured else 'no'}</td></tr>"
        for p in front)
    head = "".join(f"<th>{escape(q.label)}</th>" for q in columns)
    script = (f'<script src="/static/plotly.min.js"></script>\n<script>Plotly.newPlot("front", {_script_json(traces)}, '
              f"{_script_json(layout)}, {{responsive: true}});</script>") if plotly_js() is not None else \
        "<p>(plotly is not installed on the server: the front is shown as a table only)</p>"
    return (f'<div id="front" data-points="{len(points)}"></div>\n{script}\n'
            f'<table id="front-table"><tr><th>candidate</th><th>origin</th>{head}<th>measured</th></tr>{rows}</table>')


def _maybe(value: float | None) -> str:
    return "&ndash;" if value is None else f"{value:.3f}"


def _validation(study: Study) -> str:
    """The stored sensitivity validation (`bitsearch validate`) as a table, or nothing."""
    results = stored_validation(study.cache)
    if not results:
        return ""
    cells = [("single", "quality"), ("single", "alignment"), ("mixed", "quality"), ("mixed", "alignment")]
    head = "".join(f"<th>{k}: &rho; {m}</th>" for k, m in cells)
    rows = "".join(
        f"<tr><td>{escape(r['estimator'])} ({escape(r['metric'])})</td>"
        + "".join(f"<td>{_maybe(r['correlations'][k][m]['spearman'])}</td>" for k, m in cells) + "</tr>"
        for r in results)
    return ("<h2>Sensitivity validation (Spearman &rho; with measured degradation, held-out prompts/seeds)</h2>"
            f'<table id="validation"><tr><th>estimator (metric)</th>{head}</tr>{rows}</table>')


def _heatmap(study: Study, chosen: FrontPoint) -> str:
    from quant.config import BitConfig

    config = BitConfig.from_dict(chosen.config)
    spans = study.spec.groups.spans
    head = "".join(f"<th>steps {lo}&ndash;{hi}</th>" for lo, hi in spans)
    rows = []
    for layer in study.layers():
        cells = []
        for b in config.layer_bits(layer.fqn):
            colour = BIT_COLOURS.get(b.w, "#cccccc")
            cells.append(f'<td style="background:{colour}" title="{escape(str(b))}">W{b.w}A{b.a}</td>')
        rows.append(f"<tr><th class=layer>{escape(layer.fqn)}</th>{''.join(cells)}</tr>")
    legend = " ".join(f'<span style="background:{c};padding:0 6px">W{w}</span>' for w, c in BIT_COLOURS.items())
    return (f'<table id="heatmap"><tr><th>layer \\ timestep group</th>{head}</tr>{"".join(rows)}</table>'
            f"<p>weight bits: {legend}</p>")


def _samples(study: Study, chosen: FrontPoint) -> str:
    """The stored sample grid (made by the study when it completes; this page never makes it)."""
    if stored_samples(study, chosen) is None:
        return ('<p id="no-samples">No sample grid is stored for this config yet: the study makes it when it '
                "completes (or <code>POST /studies/{name}/samples</code>).</p>")
    return (f'<img id="samples" alt="FP vs quantized samples" src="/studies/{escape(quote(study.name, safe=""))}'
            '/samples.png">')


def render_page(study: Study) -> str:
    """One self-contained HTML page for `study`; every study-derived string is escaped."""
    name = escape(study.name)
    points = study.front_points()
    chosen = chosen_point(points)
    quality, cost = (quantity(o) for o in default_objectives(points)[:2])
    if chosen is None:
        body = "<p>No evaluation has finished yet; reload this page later.</p>"
    else:
        body = (f"<h2>Pareto front ({escape(quality.label)} vs {escape(cost.label)})</h2>{_plot(points, chosen)}"
                f"<h2>Chosen config: candidate {chosen.candidate_id} ({escape(chosen.origin)}), "
                f"{quality.name} {chosen.value(quality.name):.4g} at {cost.name} {chosen.value(cost.name):.4g}</h2>"
                f"{_heatmap(study, chosen)}"
                f"<h2>Samples: full precision (top) vs chosen config (bottom)</h2>{_samples(study, chosen)}"
                f"{_validation(study)}")
    spec = escape(json.dumps(study.spec.to_dict()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bitsearch: {name}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}} th.layer{{text-align:left;font-family:monospace}}
img{{image-rendering:pixelated;width:min(100%,640px)}}</style></head>
<body><h1>Study {name}</h1><p><code>{spec}</code></p>
{body}
</body></html>"""
