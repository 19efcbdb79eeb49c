"""cryoSPARC's 2D-classification fields and templates (cryomanifold.interop.cryosparc).

Loaded with numpy everywhere and, when installed, with cryosparc-tools'
``Dataset.load`` (``pip install cryosparc-tools``), which is what a user's script
that brings the run back into a cryoSPARC project calls.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryomanifold.export import export_selection
from cryomanifold.interop import write_cryosparc_classification
from cryomanifold.interop.cryosparc import class_ess

K = 4


def _load(path: Path) -> np.ndarray:
    with path.open("rb") as fh:
        return np.load(fh, allow_pickle=False)


@pytest.fixture
def cs_run(tmp_path: Path, make_run: Any) -> dict[str, Any]:
    run = make_run(tmp_path / "run", n_particles=300, n_classes=K, kind="cs", random_state=4)
    run["before"] = _load(run["path"] / "particles.cs")
    return run


def test_class_ess() -> None:
    np.testing.assert_allclose(class_ess([1.0, 0.5, 0.0, 0.8]), [1.0, 2.0, 1.0, 1 / 0.68], 1e-6)


def test_particles_get_cryosparcs_class_fields(cs_run: dict[str, Any]) -> None:
    files = write_cryosparc_classification(cs_run["path"])
    before, after = cs_run["before"], _load(files.particles)
    assert after.dtype["alignments2D/class"] == np.dtype("<u4")
    assert after.dtype["alignments2D/class_posterior"] == np.dtype("<f4")
    assert after.dtype["alignments2D/class_ess"] == np.dtype("<f4")
    np.testing.assert_array_equal(after["alignments2D/class"], before["cm/class"] - 1)  # 0-based
    np.testing.assert_array_equal(after["alignments2D/class_posterior"], before["cm/probability"])
    np.testing.assert_allclose(
        after["alignments2D/class_ess"], class_ess(before["cm/probability"]), rtol=1e-6
    )
    for name in before.dtype.names or ():  # everything else as it was, in order
        np.testing.assert_array_equal(after[name], before[name])
    assert not {"alignments2D/pose", "alignments2D/shift"} & set(after.dtype.names)


def test_templates_match_the_classes(cs_run: dict[str, Any]) -> None:
    classes = pd.read_csv(cs_run["path"] / "classes.csv")
    classes["resolution_angstrom"] = [14.0, np.nan, 9.5, 22.0]
    classes.to_csv(cs_run["path"] / "classes.csv", index=False)
    files = write_cryosparc_classification(cs_run["path"])
    templates = _load(files.templates)
    assert files.n_templates == K and len(templates) == K
    np.testing.assert_array_equal(templates["blob/idx"], np.arange(K))
    assert set(templates["blob/path"]) == {b"templates.mrc"}
    np.testing.assert_array_equal(templates["blob/shape"], np.full((K, 2), 32))
    np.testing.assert_allclose(templates["blob/psize_A"], 1.06, rtol=1e-6)
    np.testing.assert_allclose(templates["blob/res_A"], [14.0, np.nan, 9.5, 22.0])
    assert len(set(templates["uid"].tolist())) == K
    with (
        mrcfile.open(files.templates_stack) as mrc,
        mrcfile.open(cs_run["path"] / "class_averages.mrcs") as avg,
    ):
        assert mrc.data.dtype == np.float32
        np.testing.assert_array_equal(mrc.data, avg.data)
    # the uids are reproducible
    again = _load(write_cryosparc_classification(cs_run["path"]).templates)
    np.testing.assert_array_equal(again["uid"], templates["uid"])


def test_skipped_particles_and_an_earlier_classification(cs_run: dict[str, Any]) -> None:
    path = cs_run["path"] / "particles.cs"
    records = cs_run["before"]
    old = np.zeros(
        len(records), dtype=[("alignments2D/class", "<u4"), ("alignments2D/pose", "<f4")]
    )
    old["alignments2D/pose"] = np.linspace(0, 3, len(records))
    from numpy.lib import recfunctions

    merged = recfunctions.merge_arrays([records, old], flatten=True, usemask=False)
    merged["cm/class"][:7] = 0  # skipped by the run (NaN images)
    with path.open("wb") as fh:
        np.save(fh, merged)
    files = write_cryosparc_classification(cs_run["path"])
    after = _load(files.particles)
    assert files.n_templates == K + 1  # "unassigned" template for the skipped ones
    np.testing.assert_array_equal(after["alignments2D/class"][:7], K)
    assert np.all(after["alignments2D/class_posterior"][:7] == 0)
    assert np.all(np.isnan(after["alignments2D/class_ess"][:7]))
    # the input's own 2D pose is kept, under another prefix
    np.testing.assert_array_equal(after["alignments2D_input/pose"], old["alignments2D/pose"])
    assert "alignments2D/pose" not in after.dtype.names
    with mrcfile.open(files.templates_stack) as mrc:
        assert mrc.data.shape[0] == K + 1 and not mrc.data[K].any()


def test_export_keeps_the_class_fields(cs_run: dict[str, Any], tmp_path: Path) -> None:
    write_cryosparc_classification(cs_run["path"])
    out = tmp_path / "sel.cs"
    export_selection(cs_run["path"], out, class_numbers=[2])
    exported = _load(out)
    assert set(exported["alignments2D/class"]) == {1}


def test_cryosparc_tools_loads_particles_and_templates(cs_run: dict[str, Any]) -> None:
    dataset = pytest.importorskip("cryosparc.dataset", reason="pip install cryosparc-tools")
    files = write_cryosparc_classification(cs_run["path"])
    particles = dataset.Dataset.load(files.particles)
    assert len(particles) == len(cs_run["before"])
    assert {"blob", "alignments2D", "cm", "location"} <= set(particles.prefixes())
    np.testing.assert_array_equal(particles["uid"], cs_run["before"]["uid"])
    np.testing.assert_array_equal(particles["alignments2D/class"], cs_run["before"]["cm/class"] - 1)
    # what an External job output with the alignments2D slot would carry
    slot = particles.filter_prefixes(["alignments2D"])
    assert set(slot.fields()) == {
        "uid",
        "alignments2D/class",
        "alignments2D/class_posterior",
        "alignments2D/class_ess",
    }
    templates = dataset.Dataset.load(files.templates)
    assert templates.prefixes() == ["blob"] and len(templates) == K
    assert templates["blob/idx"].tolist() == list(range(K))
    # the README's lines: point blob/path into the External job's folder, save
    templates["blob/path"] = ["J42/templates.mrc"] * len(templates)
    buffer = io.BytesIO()
    templates.save(buffer)
    buffer.seek(0)
    assert set(dataset.Dataset.load(buffer)["blob/path"]) == {"J42/templates.mrc"}
