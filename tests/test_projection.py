"""Projection into an existing map: classes as predict, novelty, drift, refusals, atlases."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryomanifold.cli import main as cli_main
from cryomanifold.modelfile import load_model
from cryomanifold.pipeline import RunConfig, run
from cryomanifold.projection import project
from cryomanifold.resample import GeometryError
from cryomanifold.stages.project import ProjectionError
from cryomanifold.support import placement_drift, position_drift
from synthetic import RING, ROD, project_blobs, write_relion

#: A third assembly the map never saw: four blobs at the corners of a tetrahedron.
STAR = np.array([[12, 12, 12], [-12, -12, 12], [-12, 12, -12], [12, -12, -12], [0, 0, 0]], float)
CFG = RunConfig(seed=0, batch_size=64, progress=False, atlas=False, n_classes=4, max_members=40)
OPTIONS = {"batch_size": 64, "max_members": 40, "progress": False, "atlas": False}


def mixture(seed: int, *, n: int = 100, n_junk: int = 60, with_star: bool = False):
    """Rods, rings (and stars) in random views with noise, plus empty boxes."""
    rng = np.random.default_rng(seed)
    images, truth = [], []
    species = [("rod", ROD), ("ring", RING)] + ([("star", STAR)] if with_star else [])
    for name, centres in species:
        rots = Rotation.random(n, random_state=rng.integers(1 << 31))
        images.append(project_blobs(centres, rots, 64, shifts=rng.uniform(-3, 3, (n, 2))))
        truth += [name] * n
    images.append(np.zeros((n_junk, 64, 64), np.float32))
    truth += ["junk:ice"] * n_junk
    stack = np.concatenate(images)
    stack += rng.normal(scale=stack[: 2 * n].std(), size=stack.shape).astype(np.float32)
    order = rng.permutation(len(truth))
    return stack[order], np.asarray(truth)[order]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run on rods, rings and empty boxes: the map."""
    images, truth = mixture(1)
    root = tmp_path_factory.mktemp("ref")
    star = write_relion(root / "data", images, truth)
    out = root / "run"
    run(star, out, CFG)
    return star, out, images, truth


@pytest.fixture(scope="module")
def new_data(tmp_path_factory):
    images, truth = mixture(2, with_star=True)
    return write_relion(tmp_path_factory.mktemp("new"), images, truth), images, truth


@pytest.fixture(scope="module")
def projected(reference, new_data, tmp_path_factory):
    _, ref_run, *_ = reference
    star, _, truth = new_data
    out = tmp_path_factory.mktemp("proj") / "out"
    return project(star, ref_run, out, **{**OPTIONS, "atlas": True}), out, truth


def test_projected_classes_match_predict(projected, reference):
    result, out, _ = projected
    manifold = load_model(reference[1] / "model").manifold
    features = np.load(out / "features.npy")
    expected = manifold.predict(features)
    np.testing.assert_array_equal(result.nearest, expected)
    kept = ~result.novel
    np.testing.assert_array_equal(result.labels[kept], expected[kept])
    assert (result.labels[result.novel] == -1).all()
    np.testing.assert_allclose(result.embedding, manifold.transform(features), atol=1e-6)
    parts = starfile.read(out / "particles.star", always_dict=True)["particles"]
    np.testing.assert_array_equal(parts["rlnClassNumber"].to_numpy(), result.labels + 1)
    np.testing.assert_array_equal(parts["cmNearestClass"].to_numpy(), expected + 1)
    np.testing.assert_array_equal(parts["cmNovel"].to_numpy(), result.novel.astype(int))
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "projection" and info["n_novel"] == int(result.novel.sum())
    assert info["projection"]["geometry"]["native"] is True


def test_novel_flag_fires_for_an_unseen_species(projected):
    result, _, truth = projected
    star = truth == "star"
    known = np.isin(truth, ["rod", "ring"])
    assert result.novel[star].mean() >= 0.8, result.novel[star].mean()
    assert result.novel[known].mean() < 0.05, result.novel[known].mean()


def test_projection_writes_the_run_folder_with_the_map_in_grey(projected):
    from cryomanifold.atlas import atlas_payload

    result, out, _ = projected
    for name in ("class_averages.mrcs", "classes.csv", "map.png", "atlas.html", "embedding.npy"):
        assert (out / name).is_file(), name
    meta, arrays = atlas_payload(out)
    assert meta["n_reference"] == np.load(out / "reference_embedding.npy").shape[0] > 0
    assert arrays["reference"].shape == (meta["n_reference"], 2)
    assert "novel" in meta["fields"] and arrays["novel"].max() == 255
    # novel particles are not averaged: class sizes count the others
    sizes = np.loadtxt(out / "classes.csv", delimiter=",", skiprows=1, usecols=1)
    assert sizes.sum() == int((result.labels >= 0).sum())


def test_drift_of_the_reference_own_particles(reference, tmp_path):
    star, ref_run, _, _ = reference
    result = project(star, ref_run, tmp_path / "own", **OPTIONS)
    # the same images through the projection give the same features and places
    assert (tmp_path / "own" / "features.npy").read_bytes() == (
        ref_run / "features.npy"
    ).read_bytes()
    manifold = load_model(ref_run / "model").manifold
    drift = position_drift(manifold, result.embedding, np.load(ref_run / "embedding.npy"))
    assert drift["median_displacement"] == 0.0 and drift["class_agreement"] == 1.0
    assert not result.novel.any()
    # placed from the other reference points (leave one out): near where UMAP put them
    loo = placement_drift(manifold)
    assert loo["median_displacement"] < 0.05 * loo["map_extent"], loo
    assert loo["class_agreement"] > 0.8, loo


def test_other_geometry_is_resampled_and_reported(reference, tmp_path):
    _, ref_run, images, truth = reference
    # the same particles cut to 60 px: padded back to the map's 64 px
    star = write_relion(tmp_path / "small", images[:, 2:62, 2:62], truth)
    result = project(star, ref_run, tmp_path / "out", **OPTIONS)
    geometry = result.info["projection"]["geometry"]
    assert not geometry["native"] and "padded" in geometry["description"]
    own = starfile.read(ref_run / "particles.star", always_dict=True)["particles"]
    agree = np.mean(result.nearest + 1 == own["rlnClassNumber"].to_numpy())
    assert agree > 0.9, agree


def test_refuses_what_cannot_be_matched(reference, new_data, tmp_path):
    _, ref_run, images, truth = reference
    # a coarser pixel size than the map's
    coarse = write_relion(tmp_path / "coarse", images, truth, pixel_size_angstrom=4.0)
    with pytest.raises(GeometryError, match="coarser"):
        project(coarse, ref_run, tmp_path / "o1", **OPTIONS)
    # a map whose features were CTF-corrected, for particles without CTF
    bad = tmp_path / "bad_map"
    shutil.copytree(ref_run / "model", bad / "model")
    meta = json.loads((bad / "model" / "model.json").read_text())
    meta["settings"]["ctf_corrected"] = True
    (bad / "model" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ProjectionError, match="ctf_corrected"):
        project(new_data[0], bad, tmp_path / "o2", **OPTIONS)
    # a map of another feature version
    meta["settings"].update(ctf_corrected=False, n_features=999)
    (bad / "model" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ProjectionError, match="n_features"):
        project(new_data[0], bad, tmp_path / "o3", **OPTIONS)
    del meta["settings"]["feature_options"]
    (bad / "model" / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "o4"
    assert cli_main(["project", str(new_data[0]), "--onto", str(bad), "--out", str(out)]) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def atlas(reference, new_data, tmp_path_factory):
    """An atlas of the reference run and a run of the new data."""
    from cryomanifold.atlas_of_datasets import build_atlas

    root = tmp_path_factory.mktemp("atlas")
    second = root / "run_new"
    run(new_data[0], second, CFG)
    index = build_atlas(
        [reference[1], second], root / "atlas", names=["old", "new"], n_classes=5, progress=False
    )
    return index, root / "atlas", second


def test_atlas_of_two_runs(atlas, reference, new_data):
    from cryomanifold.atlas.datasets import datasets_payload

    index, out, _ = atlas
    assert [d["name"] for d in index["datasets"]] == ["old", "new"]
    n_old, n_new = len(reference[3]), len(new_data[2])
    assert index["n_particles"] == n_old + n_new
    assert [d["offset"] for d in index["datasets"]] == [0, n_old]
    # balanced: the same number from each run (all of the smaller)
    assert index["fit"]["n_fit_per_dataset"] == [n_old, n_old]
    for name in ("atlas.html", "map.png", "atlas.json", "model/model.json"):
        assert (out / name).is_file(), name
    meta, arrays = datasets_payload(out)
    assert np.bincount(arrays["dataset"]).tolist() == [n_old, n_new]
    assert meta["fields"]["dataset"]["kind"] == "category"
    # every dataset holds its input's rows with the atlas's classes
    new = starfile.read(out / "datasets/new/particles.star", always_dict=True)["particles"]
    assert new["cmTruthLabel"].tolist() == new_data[2].tolist()
    assert new["rlnClassNumber"].between(0, index["n_classes"]).all()


def test_export_per_dataset_from_an_atlas_selection(atlas, new_data, tmp_path, capsys):
    from cryomanifold.atlas.selection import Selection, write_selection

    index, out, _ = atlas
    offset = index["datasets"][1]["offset"]
    picked = np.array([3, 5, offset + 1, offset + 4])
    sel = write_selection(
        tmp_path / "selection.json",
        Selection(index["run_id"], index["n_particles"], particle_indices=picked),
    )
    dest = tmp_path / "new.star"
    argv = ["export", str(out), "--selection", str(sel), "--out", str(dest)]
    assert cli_main(argv) == 1
    assert "--dataset NAME" in capsys.readouterr().err
    assert cli_main([*argv, "--dataset", "new"]) == 0
    rows = starfile.read(dest, always_dict=True)["particles"]
    assert rows["cmTruthLabel"].tolist() == new_data[2][[1, 4]].tolist()
    assert cli_main([*argv[:-1], str(tmp_path / "x.star"), "--dataset", "nope"]) == 1
    assert "old, new" in capsys.readouterr().err


def test_atlas_refuses_runs_with_other_feature_settings(atlas, tmp_path):
    from cryomanifold.atlas_of_datasets import build_atlas

    _, _, second = atlas
    other = tmp_path / "other"
    shutil.copytree(second, other)
    meta = json.loads((other / "model" / "model.json").read_text())
    meta["settings"]["feature_options"] = {"n_max": 12}
    (other / "model" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="feature_options"):
        build_atlas([second, other], tmp_path / "a", progress=False)
    assert cli_main(["atlas", str(second), str(other), "--out", str(tmp_path / "b")]) == 1
    assert not (tmp_path / "b" / "atlas.json").exists()


@pytest.mark.browser
def test_pages_load_in_a_browser(projected, atlas):
    """The projection's page (map in grey, novel colouring) and the atlas page (dataset
    colouring and legend) run without errors in headless Chromium (skipped without it)."""
    import os

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = os.environ.get("CRYOMANIFOLD_CHROMIUM") or shutil.which("chromium")
    if exe is None:
        pytest.skip("no chromium found (apt-get install chromium)")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader"]
    args.append("--enable-unsafe-swiftshader")
    pages = {projected[1] / "atlas.html": "novel", atlas[1] / "atlas.html": "dataset"}
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, args=args, headless=True)
        except Exception as exc:  # any launch failure means: no usable browser here
            pytest.skip(f"chromium did not start: {exc}")
        for path, colour in pages.items():
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            problems: list[str] = []
            page.on("console", lambda m, p=problems: p.append(m.text) if m.type == "error" else 0)
            page.on("pageerror", lambda e, p=problems: p.append(str(e)))
            page.goto(path.as_uri())
            page.wait_for_function(
                "window.cmAtlas && (window.cmAtlas.ready || window.cmAtlas.error)", timeout=60_000
            )
            assert page.evaluate("window.cmAtlas.error") is None
            page.evaluate(f"window.cmAtlas.setColour('{colour}')")
            page.wait_for_timeout(100)
            legend = page.inner_text("#cm-legend")
            if colour == "dataset":
                assert "old" in legend and "new" in legend, legend
            assert problems == [], problems
            page.close()
        browser.close()
