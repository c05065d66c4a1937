"""The per-study web page in a real headless Chromium: it loads, plots the front and shows the bits heat map."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from search.api import create_app
from search.front import default_objectives
from search.spec import StudySpec
from search.study import Study

SPEC = StudySpec(budget=("wbits=4.5",), timestep_groups=2, num_steps=8, trials=2, eval_samples=4,
                 calibration_samples=2, baselines=("W8A8",))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
# Set BITSEARCH_SCREENSHOT=docs/pareto_page.png to refresh the README's picture; tests write to a temp dir.
SCREENSHOT_ENV = "BITSEARCH_SCREENSHOT"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    uvicorn = pytest.importorskip("uvicorn")
    db = str(tmp_path_factory.mktemp("page") / "page.db")
    Study.create("tiny<&>", SPEC, db).run(progress=lambda _m: None)  # a name that needs escaping
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(db, None, open_reads=True), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", db
    srv.should_exit = True
    thread.join(timeout=10)


def test_page_in_headless_chromium(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the browser test needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    base, db = server
    study = Study.load("tiny<&>", db)
    n_points = len(study.front_points())
    front = study.pareto(default_objectives(study.front_points()))  # quality vs measured latency and memory
    assert n_points >= 2 and front
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            response = page.goto(f"{base}/studies/tiny%3C%26%3E/page", wait_until="load")
            assert response is not None and response.status == 200
            assert page.title() == "bitsearch: tiny<&>"  # escaped in the HTML, shown verbatim
            page.wait_for_selector("#front .main-svg", timeout=30_000)  # plotly drew its SVG
            traces = page.evaluate("document.getElementById('front').data.length")
            origins = {p.origin for p in study.front_points()}
            assert traces >= len(origins) + 1  # one trace per origin + the front (+ the chosen star)
            plotted = page.evaluate("""() => document.getElementById('front').data
                .filter(t => !t.name.startsWith('chosen') && !t.name.startsWith('Pareto front'))
                .reduce((n, t) => n + t.x.length, 0)""")
            assert plotted == n_points
            ringed = page.evaluate("""document.getElementById('front').data
                .find(t => t.name.startsWith('Pareto front')).x.length""")
            assert ringed == len(front)
            assert page.locator("#front .scatterlayer .point").count() >= n_points  # rendered markers
            heat = page.locator("#heatmap tr")
            assert heat.count() == len(study.layers()) + 1
            assert page.locator("#heatmap tr").nth(0).locator("th").count() == SPEC.timestep_groups + 1
            page.wait_for_function("document.getElementById('samples').complete && "
                                   "document.getElementById('samples').naturalWidth > 0", timeout=120_000)
            assert not errors, errors
            shot = os.environ.get(SCREENSHOT_ENV) or str(tmp_path / "pareto_page.png")
            page.screenshot(path=shot, full_page=True)
            assert Path(shot).stat().st_size > 10_000
        finally:
            browser.close()
    # the sample grid was cached as an artifact, so it is generated once
    assert len(study.storage.list_artifacts(study.name, kind="samples")) == 1
