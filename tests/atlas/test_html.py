"""atlas.html: self-contained page and its embedded data (no browser needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import starfile

from cryomanifold.atlas import write_atlas_html
from cryomanifold.atlas.encode import (
    images_to_uint8,
    pack_arrays,
    quantize,
    quantize_positions,
    unpack_arrays,
)
from cryomanifold.atlas.runfolder import read_class_images
from cryomanifold.cli.atlas import main as atlas_main


def _embedded(html: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse the page's JSON and binary data the way atlas.js does."""
    meta_text = re.search(
        r'<script id="cm-meta" type="application/json">(.*?)</script>', html, re.S
    )
    data_text = re.search(
        r'<script id="cm-data" type="application/octet-stream">(.*?)</script>', html, re.S
    )
    assert meta_text and data_text
    meta = json.loads(meta_text.group(1))
    arrays = unpack_arrays(data_text.group(1), meta["arrays"], compressed=meta["compressed"])
    return meta, arrays


def test_html_is_self_contained(star_run: dict[str, Any]) -> None:
    path = write_atlas_html(star_run["path"])
    assert path == star_run["path"] / "atlas.html"
    html = path.read_text(encoding="utf-8")
    # no resource reference that needs a network or another file
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html, re.I)
    refs += re.findall(r"""(?<![\w.])url\(\s*["']?([^"')]*)""", html)  # CSS url(...)
    assert not [r for r in refs if not r.startswith(("#", "data:", "blob:"))]
    assert not re.search(r"\bimport\s*\(|\bimport\s+[\w{*]|@import|<link\b|\bfetch\s*\(", html)
    assert "URL.createObjectURL(blob)" in html  # the only URL the page makes: the download
    assert "http://" not in html and "https://" not in html
    assert html.lower().count("<script") == html.lower().count("</script") == 3


@pytest.mark.parametrize("compress", [True, False])
def test_embedded_data_round_trip(star_run: dict[str, Any], tmp_path: Path, compress: bool) -> None:
    path = write_atlas_html(star_run["path"], tmp_path / "a.html", compress=compress)
    meta, arrays = _embedded(path.read_text(encoding="utf-8"))
    n, info = star_run["info"]["n_particles"], star_run["info"]
    assert meta["run_id"] == info["run_id"] and meta["n"] == n
    np.testing.assert_array_equal(arrays["cls"], star_run["labels"])
    x0, x1, y0, y1 = meta["bounds"]
    xy = np.stack(
        [
            x0 + arrays["pos"][:, 0] / 65535 * (x1 - x0),
            y0 + arrays["pos"][:, 1] / 65535 * (y1 - y0),
        ],
        axis=1,
    )
    np.testing.assert_allclose(xy, star_run["embedding"], atol=(x1 - x0 + y1 - y0) / 65535)
    np.testing.assert_allclose(arrays["junk"] / 255, star_run["junk_scores"], atol=0.5 / 255 + 1e-9)
    np.testing.assert_allclose(
        arrays["probability"] / 255, star_run["probabilities"], atol=0.5 / 255 + 1e-9
    )
    names = np.asarray(meta["micrographs"])[arrays["micrograph"]]
    np.testing.assert_array_equal(names, star_run["particles"]["rlnMicrographName"].to_numpy())
    sizes = {row["c"]: row["size"] for row in meta["classes"]}
    assert sizes == dict(
        zip(star_run["classes"]["class_number"], star_run["classes"]["size"], strict=True)
    )
    assert [row["junk"] for row in meta["classes"]] == [False, True, False, False, False]
    k, m = info["n_classes"], info["examples_per_class"]
    expected = images_to_uint8(read_class_images(star_run["path"]))
    np.testing.assert_array_equal(arrays["averages"], expected)
    assert arrays["examples"].shape == (k * m, 32, 32)
    assert len(meta["example_present"]) == k * m


def test_empty_class_examples_are_marked(tmp_path: Path, make_run: Any) -> None:
    run = make_run(
        tmp_path / "r", n_particles=80, n_classes=4, examples_per_class=3, empty_classes=(3,)
    )
    meta, arrays = _embedded(write_atlas_html(run["path"]).read_text(encoding="utf-8"))
    present = np.asarray(meta["example_present"]).reshape(4, 3)
    assert not present[2].any() and present[[0, 1, 3]].all()
    assert meta["classes"][2]["size"] == 0
    assert not arrays["examples"].reshape(4, 3, -1)[2].any()


def test_strings_cannot_break_out_of_the_script(star_run: dict[str, Any]) -> None:
    star = star_run["path"] / "particles.star"
    blocks = starfile.read(star, always_dict=True)
    evil = "</script><script>alert(1)</script>"
    blocks["particles"].loc[0, "rlnMicrographName"] = evil
    starfile.write(blocks, star)
    html = write_atlas_html(star_run["path"]).read_text(encoding="utf-8")
    assert html.lower().count("</script") == 3
    meta, arrays = _embedded(html)
    assert meta["micrographs"][arrays["micrograph"][0]] == evil


def test_quantize_and_positions() -> None:
    q = quantize(np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan]), 0.0, 1.0)
    np.testing.assert_array_equal(q, [0, 0, 128, 255, 255, 0])
    xy = np.array([[0.0, 10.0], [2.0, 30.0], [1.0, 20.0]])
    pos, bounds = quantize_positions(xy)
    assert bounds == (0.0, 2.0, 10.0, 30.0)
    np.testing.assert_array_equal(pos, [[0, 0], [65535, 65535], [32768, 32768]])
    _, flat = quantize_positions(np.zeros((3, 2)))
    assert flat[1] > flat[0] and flat[3] > flat[2]


def test_images_to_uint8() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((3, 96, 96)).astype(np.float32)
    imgs[1] = 0
    out = images_to_uint8(imgs, max_box=64)
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    assert not out[1].any()
    assert out[0].min() == 0 and out[0].max() == 255
    small = images_to_uint8(imgs[:1, :32, :32], max_box=64)
    assert small.shape == (1, 32, 32)
    # monotone: brighter input pixels never get darker output
    order = np.argsort(imgs[0, :32, :32].ravel())
    assert np.all(np.diff(small[0].ravel()[order].astype(int)) >= 0)


def test_pack_alignment_and_types() -> None:
    arrays = {
        "a": np.arange(3, dtype=np.uint8),
        "b": np.arange(5, dtype=np.uint16),
        "c": np.linspace(0, 1, 4, dtype=np.float32),
    }
    b64, layout = pack_arrays(arrays, compress=False)
    assert all(spec["offset"] % 4 == 0 for spec in layout.values())
    back = unpack_arrays(b64, layout, compressed=False)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(back[name], arr)
    with pytest.raises(ValueError, match="dtype"):
        pack_arrays({"x": np.zeros(2, dtype=np.int64)})


def test_cli_atlas(
    star_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "page.html"
    assert atlas_main([str(star_run["path"]), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert atlas_main([str(star_run["path"]), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _embedded(out.read_text(encoding="utf-8"))[0]["compressed"] is False
    assert atlas_main([str(star_run["path"]), "--out", str(out), "--overwrite", "--compress"]) == 0
    assert _embedded(out.read_text(encoding="utf-8"))[0]["compressed"] is True
    (star_run["path"] / "run.json").unlink()
    assert atlas_main([str(star_run["path"]), "--out", str(tmp_path / "x.html")]) == 1
    assert "run.json not found" in capsys.readouterr().err


def test_inconsistent_run_named(star_run: dict[str, Any]) -> None:
    np.save(star_run["path"] / "embedding.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"embedding\.npy"):
        write_atlas_html(star_run["path"])
    pd.DataFrame({"class_number": [1]}).to_csv(star_run["path"] / "classes.csv", index=False)
    with pytest.raises(ValueError, match=r"classes\.csv.*size"):
        write_atlas_html(star_run["path"])


def test_class_resolution_scale_and_run_folder(tmp_path: Path, make_run: Any) -> None:
    run = make_run(tmp_path / "run", n_particles=80, n_classes=4, box_size=96, resolution=True)
    path = write_atlas_html(run["path"], max_image_box=64)
    meta, arrays = _embedded(path.read_text(encoding="utf-8"))
    assert [r["resolution"] for r in meta["classes"]] == [10.0, 12.0, 14.0, None]
    assert meta["resolution_range"] == [10.0, 14.0]
    # averages shown Fourier-cropped from 96 to 64 px: 1.5 times the run's pixel size
    assert arrays["averages"].shape[-1] == 64
    assert meta["image_pixel_angstrom"] == pytest.approx(1.06 * 96 / 64)
    assert meta["run_dir"] == str(run["path"].resolve())
    # a run without the column has no resolution and no slider range
    plain = make_run(tmp_path / "plain", n_particles=40, n_classes=3)
    meta, _ = _embedded(write_atlas_html(plain["path"]).read_text(encoding="utf-8"))
    assert meta["resolution_range"] is None
    assert all(r["resolution"] is None for r in meta["classes"])
