"""atlas.html in a real headless Chromium (playwright driving Debian's /usr/bin/chromium).

Skipped when playwright or the browser is missing. Install on Debian with
``apt-get install -y chromium`` and ``pip install playwright`` (never
``playwright install``: it downloads a browser). CRYOMANIFOLD_CHROMIUM overrides
the browser path.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cryomanifold.atlas import write_atlas_html
from cryomanifold.atlas.encode import images_to_uint8
from cryomanifold.atlas.runfolder import read_class_images
from cryomanifold.export import export_selection

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL through ANGLE's software Vulkan (SwiftShader): works headless without a GPU
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
N_POINTS = 100_000


def _chromium() -> str | None:
    path = os.environ.get("CRYOMANIFOLD_CHROMIUM") or "/usr/bin/chromium"
    return path if Path(path).is_file() else shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium found (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        except Exception as exc:  # any launch failure means: no usable browser here
            pytest.skip(f"chromium did not start: {exc}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory, make_run: Any) -> dict[str, Any]:
    run = make_run(
        tmp_path_factory.mktemp("atlas") / "run",
        n_particles=N_POINTS,
        n_classes=12,
        box_size=48,
        examples_per_class=4,
        junk_classes=(2, 7),
        resolution=True,
        random_state=3,
    )
    run["html"] = write_atlas_html(run["path"])
    return run


@pytest.fixture
def page(browser: Any, big_run: dict[str, Any]) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.on(
        "request",
        lambda r: (
            problems.append(f"request {r.url}")
            if not r.url.startswith(("file:", "data:", "blob:"))
            else None
        ),
    )
    pg.goto(big_run["html"].as_uri())
    pg.wait_for_function(
        "window.cmAtlas && (window.cmAtlas.ready || window.cmAtlas.error)", timeout=60_000
    )
    pg.problems = problems
    yield pg
    context.close()


def test_loads_without_errors(page: Any) -> None:
    assert page.evaluate("window.cmAtlas.error") is None
    assert page.evaluate("window.cmAtlas.n") == N_POINTS
    assert page.problems == []
    assert page.evaluate("document.querySelectorAll('.card').length") == 12
    assert page.evaluate("window.cmAtlas.firstFrameMs") > 0


def _canvas_pixels(page: Any, selector: str) -> np.ndarray:
    data = page.evaluate(
        """(sel) => { const c = document.querySelector(sel);
             return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""",
        selector,
    )
    return np.asarray(data, dtype=np.uint8).reshape(-1, 4)[:, 0]


def _average_pixels(page: Any, selector: str, expected: np.ndarray) -> None:
    """The canvas shows ``expected`` (b, b), with the white scale bar drawn on it."""
    got = _canvas_pixels(page, selector).reshape(expected.shape).astype(int)
    bar = page.evaluate("window.cmAtlas.scaleBar()")
    mask = np.zeros(expected.shape, dtype=bool)
    mask[bar["y"] : bar["y"] + bar["h"], bar["x"] : bar["x"] + bar["px"]] = True
    assert (got[mask] == 255).all()
    np.testing.assert_array_equal(got[~mask], expected[~mask])


def test_hover_shows_class_average(page: Any, big_run: dict[str, Any]) -> None:
    expected = images_to_uint8(read_class_images(big_run["path"]))
    page.hover('.card[data-cls="5"]')
    assert page.get_attribute("#cm-info", "data-cls") == "5"
    _average_pixels(page, "#cm-info canvas.avg", expected[4])
    text = page.inner_text("#cm-info")
    size = int((big_run["labels"] == 5).sum())
    assert "Class 5" in text and f"{size:,} particles" in text and "not junk" in text
    assert "resolution 18.0 Å" in text  # 8 + 2 * 5
    page.hover('.card[data-cls="7"]')
    assert "junk" in page.inner_text("#cm-info .badge")
    assert page.inner_text("#cm-info .badge") == "junk"

    # hovering a point on the map shows that point's class
    i = int(np.flatnonzero(big_run["labels"] == 3)[0])
    xy = page.evaluate(f"window.cmAtlas.pointClient({i})")
    page.mouse.move(xy["x"], xy["y"])
    page.wait_for_function("document.getElementById('cm-info').dataset.point !== ''")
    point = int(page.get_attribute("#cm-info", "data-point"))
    cls = int(page.get_attribute("#cm-info", "data-cls"))
    assert cls == big_run["labels"][point]
    _average_pixels(page, "#cm-info canvas.avg", expected[cls - 1])


def test_scale_bar_in_angstrom(page: Any) -> None:
    bar = page.evaluate("window.cmAtlas.scaleBar()")
    # 48-px averages at 1.06 Å/px (51 Å wide): a 20 Å bar, 19 pixels long
    assert bar["angstrom"] == 20 and bar["px"] == round(20 / 1.06)
    assert "bar 20 Å" in page.inner_text("#cm-nclasses")
    assert page.get_attribute('.card[data-cls="1"] canvas.avg', "title") == "scale bar 20 Å"


def test_gallery_shows_resolution_and_sorts_by_it(page: Any, big_run: dict[str, Any]) -> None:
    cap = page.inner_text('.card[data-cls="3"] .cap')
    size = int((big_run["labels"] == 3).sum())
    assert f"{size:,}" in cap and "14.0 Å" in cap
    assert "Å" not in page.inner_text('.card[data-cls="12"] .cap')  # no estimate: nothing shown
    page.select_option("#cm-sort", "resolution")
    order = page.evaluate(
        "Array.from(document.querySelectorAll('#cm-gallery .card')).map(c => +c.dataset.cls)"
    )
    assert order == list(range(1, 13))  # 10, 12, ... 30 Å, then the class without one
    page.select_option("#cm-sort", "size")
    order = page.evaluate(
        "Array.from(document.querySelectorAll('#cm-gallery .card')).map(c => +c.dataset.cls)"
    )
    sizes = np.bincount(big_run["labels"], minlength=13)[1:]
    assert order == [int(c) + 1 for c in np.argsort(-sizes, kind="stable")]


def test_class_colours_are_those_of_map_png(page: Any) -> None:
    from cryomanifold.atlas.palette import class_colours

    expected = np.round(class_colours(12) * 255).astype(int)
    for c in range(1, 13):
        assert page.evaluate(f"window.cmAtlas.classColour({c})") == expected[c - 1].tolist()
        border = page.evaluate(
            f"getComputedStyle(document.querySelector('.card[data-cls=\"{c}\"]')).borderLeftColor"
        )
        assert border == "rgb({}, {}, {})".format(*expected[c - 1])


def test_select_two_classes_and_download(
    page: Any, big_run: dict[str, Any], tmp_path: Path
) -> None:
    page.click('.card[data-cls="4"]')
    page.click('.card[data-cls="9"]')
    mask = np.isin(big_run["labels"], [4, 9])
    assert page.evaluate("window.cmAtlas.selectedCount()") == mask.sum()
    assert f"{int(mask.sum()):,} selected" in page.inner_text("#cm-count")
    with page.expect_download() as info:
        page.click("#cm-download")
    path = tmp_path / "selection.json"
    info.value.save_as(path)
    assert info.value.suggested_filename == "selection.json"
    sel = json.loads(path.read_text())
    assert sel["format"] == "cryomanifold-selection" and sel["version"] == 1
    assert sel["run_id"] == big_run["info"]["run_id"]
    assert sel["n_particles"] == N_POINTS and sel["n_selected"] == mask.sum()
    assert sel["class_numbers"] == [4, 9]
    assert sel["particle_indices"] == np.flatnonzero(mask).tolist()
    assert "filters" not in sel
    # whole classes and no filter: the command needs no selection file
    command = page.input_value("#cm-command")
    assert command == (
        f"cryomanifold export {big_run['path'].resolve()} --classes 4,9 "
        "--out particles_selected.star"
    )

    # clicking a selected class again deselects it
    page.click('.card[data-cls="4"]')
    assert page.evaluate("window.cmAtlas.selectedCount()") == (big_run["labels"] == 9).sum()

    # the downloaded file drives the export
    result = export_selection(big_run["path"], tmp_path / "sel.star", selection=path)
    assert result.n_written == mask.sum()


def test_sliders_narrow_the_selection(page: Any, big_run: dict[str, Any], tmp_path: Path) -> None:
    from cryomanifold.atlas.encode import quantize

    page.click('.card[data-cls="4"]')
    page.click('.card[data-cls="9"]')
    labels = big_run["labels"]
    page.evaluate("window.cmAtlas.setFilters({junk: 0.5, probability: 0.6, resolution: 24})")
    # the page compares the stored 8-bit values, as drawn
    junk_q = quantize(big_run["junk_scores"], 0, 1).astype(int)
    prob_q = quantize(big_run["probabilities"], 0, 1).astype(int)
    res_ok = np.isin(labels, range(1, 9))  # classes 1-8: 10-24 Å
    passing = (junk_q <= round(0.5 * 255)) & (prob_q >= round(0.6 * 255)) & res_ok
    assert page.evaluate("window.cmAtlas.passCount()") == passing.sum()
    wanted = np.isin(labels, [4, 9]) & passing
    assert page.evaluate("window.cmAtlas.selectedCount()") == wanted.sum() > 0
    assert "filtered" in page.get_attribute('.card[data-cls="9"]', "class")  # 26 Å > 24 Å
    assert "sel-part" in page.get_attribute('.card[data-cls="4"]', "class")
    assert f"{int(passing.sum()):,} of {N_POINTS:,} particles pass" in page.inner_text(
        "#cm-filters"
    )
    command = page.input_value("#cm-command")
    assert command.endswith("--selection selection.json --out particles_selected.star")
    with page.expect_download() as info:
        page.click("#cm-download")
    path = tmp_path / "selection.json"
    info.value.save_as(path)
    sel = json.loads(path.read_text())
    assert sel["particle_indices"] == np.flatnonzero(wanted).tolist()
    assert "class_numbers" not in sel
    assert sel["filters"] == {
        "junk_score_max": 0.5,
        "class_probability_min": 0.6,
        "class_resolution_max_angstrom": 24,
    }
    result = export_selection(big_run["path"], tmp_path / "sel.star", selection=path)
    assert result.n_written == wanted.sum()
    # Reset filters: the whole classes again
    page.click("#cm-f-reset")
    assert page.evaluate("window.cmAtlas.passCount()") == N_POINTS
    assert page.evaluate("window.cmAtlas.selectedCount()") == np.isin(labels, [4, 9]).sum()


def test_hovering_a_card_does_not_fade_the_selection(
    page: Any, big_run: dict[str, Any], tmp_path: Path
) -> None:
    from PIL import Image

    labels = big_run["labels"]
    page.click('.card[data-cls="4"]')
    page.mouse.move(0, 0)
    page.wait_for_timeout(200)

    def colours(cls: int) -> np.ndarray:
        png = page.screenshot()
        shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
        idx = np.flatnonzero(labels == cls)[:400]
        pts = [page.evaluate(f"window.cmAtlas.pointClient({i})") for i in idx[::10]]
        return np.array([shot[int(p["y"]), int(p["x"])] for p in pts])

    before_sel, before_other = colours(4), colours(5)
    page.hover('.card[data-cls="9"]')
    page.wait_for_timeout(200)
    after_sel, after_other = colours(4), colours(5)
    # the selected class keeps its colour; an unselected, unhovered class fades to white
    assert np.abs(after_sel - before_sel).mean() < 3
    assert after_other.mean() > before_other.mean() + 15


def test_box_and_lasso_selection(page: Any) -> None:
    box = page.locator("#cm-plot").bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    page.click("#cm-mode-box")
    page.mouse.move(x0 + 1, y0 + 1)
    page.mouse.down()
    page.mouse.move(x0 + w - 1, y0 + h - 1, steps=4)
    page.mouse.up()
    assert page.evaluate("window.cmAtlas.selectedCount()") == N_POINTS
    # Alt-drag over the left half removes the particles drawn there
    page.keyboard.down("Alt")
    page.mouse.move(x0 + 1, y0 + 1)
    page.mouse.down()
    page.mouse.move(x0 + w / 2, y0 + h - 1, steps=4)
    page.mouse.up()
    page.keyboard.up("Alt")
    left = page.evaluate("window.cmAtlas.selectedCount()")
    assert 0 < left < N_POINTS
    sel = page.evaluate("window.cmAtlas.selectionObject()")
    assert "class_numbers" not in sel or sel["n_selected"] == left
    assert len(sel["particle_indices"]) == left
    # a lasso around the whole plot selects everything again
    page.click("#cm-mode-lasso")
    page.mouse.move(x0 + 2, y0 + 2)
    page.mouse.down()
    for fx, fy in ((0.99, 0.01), (0.99, 0.99), (0.01, 0.99), (0.01, 0.02)):
        page.mouse.move(x0 + fx * w, y0 + fy * h, steps=3)
    page.mouse.up()
    assert page.evaluate("window.cmAtlas.selectedCount()") == N_POINTS
    page.click("#cm-clear")
    assert page.evaluate("window.cmAtlas.selectedCount()") == 0


def test_screenshot_is_not_blank(page: Any, tmp_path: Path) -> None:
    from PIL import Image

    def shot() -> np.ndarray:
        png = page.locator("#cm-gl").screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)

    by_class = shot()
    assert by_class.std() > 10  # points on a white background, not a blank canvas
    assert (by_class.sum(axis=2) < 600).mean() > 0.01  # a fair share of coloured pixels
    page.select_option("#cm-colour", "junk")
    page.wait_for_timeout(100)
    by_junk = shot()
    assert np.abs(by_junk - by_class).mean() > 1  # recoloured
    # pan with the mouse and zoom with the wheel: the picture moves
    box = page.locator("#cm-plot").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 150, cy + 60, steps=5)
    page.mouse.up()
    page.mouse.wheel(0, -400)
    page.wait_for_timeout(400)
    moved = shot()
    assert np.abs(moved - by_junk).mean() > 1
    Image.fromarray(moved.astype(np.uint8)).save(tmp_path / "atlas.png")
    assert page.problems == []
