"""Datasets on disk: files, STAR columns, determinism, shuffling, micrographs, overwrite."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryomanifold.simulate import (
    JUNK_KINDS,
    SimulationConfig,
    plan_particles,
    simulate_dataset,
    simulate_particles,
)

MODELS = ["builtin:ring_d5", "builtin:asym_l"]
SMALL = {"box_size": 64, "pixel_size_angstrom": 3.0}

OPTICS_COLUMNS = {
    "rlnOpticsGroup",
    "rlnOpticsGroupName",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
}
PARTICLE_COLUMNS = {
    "rlnImageName",
    "rlnOpticsGroup",
    "rlnMicrographName",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "cmTruthLabel",
}


def _simulate(out: Path, **kw: object) -> Path:
    args: dict[str, object] = {
        "n_per_model": 6,
        "junk_fraction": 0.4,
        "seed": 0,
        "batch_size": 32,
        "particles_per_micrograph": 5,
        **SMALL,
    }
    args.update(kw)
    return simulate_dataset(MODELS, out_dir=out, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _simulate(tmp_path_factory.mktemp("sim") / "out", batch_size=7)


def test_writes_a_relion31_star_and_a_matching_stack(written: Path) -> None:
    out = written.parent
    assert written == out / "particles.star"
    assert sorted(p.name for p in out.iterdir()) == ["particles.mrcs", "particles.star"]
    tables = starfile.read(written, always_dict=True)
    optics, particles = tables["optics"], tables["particles"]
    assert set(optics.columns) >= OPTICS_COLUMNS
    assert optics.loc[0, "rlnImagePixelSize"] == pytest.approx(3.0)
    assert optics.loc[0, "rlnImageSize"] == 64
    assert optics.loc[0, "rlnVoltage"] == pytest.approx(300.0)
    assert optics.loc[0, "rlnSphericalAberration"] == pytest.approx(2.7)
    assert optics.loc[0, "rlnAmplitudeContrast"] == pytest.approx(0.1)
    assert optics.loc[0, "rlnImageDimensionality"] == 2
    assert set(particles.columns) >= PARTICLE_COLUMNS
    n = 12 + 8  # 6 per model, and junk is 40% of the whole
    assert len(particles) == n
    assert list(particles["rlnImageName"]) == [f"{i:06d}@particles.mrcs" for i in range(1, n + 1)]
    counts = particles["cmTruthLabel"].value_counts().to_dict()
    assert counts == {"ring_d5": 6, "asym_l": 6, **{f"junk:{k}": 2 for k in JUNK_KINDS}}
    with mrcfile.open(out / "particles.mrcs", permissive=False) as mrc:
        assert mrc.data.shape == (n, 64, 64)
        assert mrc.data.dtype == np.float32
        assert mrc.voxel_size.x == pytest.approx(3.0)
        assert mrc.is_image_stack()
        assert mrc.header.dmax == pytest.approx(float(mrc.data.max()))
        assert mrc.header.dmean == pytest.approx(float(mrc.data.mean()), abs=1e-4)
        # RELION-normalised: the background of every image has mean 0 and std 1
        r = np.hypot(*np.meshgrid(np.arange(64) - 32, np.arange(64) - 32))
        background = mrc.data[:, r > 0.4 * 64]
        np.testing.assert_allclose(background.mean(axis=1), 0.0, atol=1e-4)
        np.testing.assert_allclose(background.std(axis=1), 1.0, atol=1e-3)


def test_rows_are_shuffled_and_micrographs_share_a_ctf(written: Path) -> None:
    particles = starfile.read(written, always_dict=True)["particles"]
    labels = list(particles["cmTruthLabel"])
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)
    # 5 particles per micrograph, each micrograph with one defocus, distinct between them
    groups = particles.groupby("rlnMicrographName", sort=False)
    assert groups.size().tolist() == [5, 5, 5, 5]
    ctf_cols = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
    assert (groups[ctf_cols].nunique() == 1).all().all()
    per_micrograph = groups["rlnDefocusU"].first()
    assert per_micrograph.nunique() == 4
    assert ((per_micrograph > 10_000) & (per_micrograph < 25_300)).all()
    astig = particles["rlnDefocusU"] - particles["rlnDefocusV"]
    assert ((astig >= 0) & (astig <= 500)).all()
    # junk carries no pose; particles have random ones
    junk = particles["cmTruthLabel"].str.startswith("junk:")
    assert (
        (particles.loc[junk, ["rlnAngleRot", "rlnAngleTilt", "rlnOriginXAngst"]] == 0).all().all()
    )
    assert particles.loc[~junk, "rlnAngleTilt"].std() > 20


def test_same_seed_same_stack_whatever_the_batch_size(written: Path, tmp_path: Path) -> None:
    again = _simulate(tmp_path / "again", batch_size=20)
    np.testing.assert_array_equal(
        mrcfile.read(again.parent / "particles.mrcs"),
        mrcfile.read(written.parent / "particles.mrcs"),
    )
    pd.testing.assert_frame_equal(
        starfile.read(again, always_dict=True)["particles"],
        starfile.read(written, always_dict=True)["particles"],
    )
    images, _ = simulate_particles(
        MODELS,
        n_per_model=6,
        junk_fraction=0.4,
        seed=0,
        config=SimulationConfig(particles_per_micrograph=5, **SMALL),
    )
    np.testing.assert_array_equal(images, mrcfile.read(written.parent / "particles.mrcs"))


def test_different_seeds_differ(written: Path, tmp_path: Path) -> None:
    other = _simulate(tmp_path / "other", seed=1)
    a = mrcfile.read(written.parent / "particles.mrcs")
    b = mrcfile.read(other.parent / "particles.mrcs")
    assert a.shape == b.shape
    assert np.abs(a - b).mean() > 0.5
    pa = starfile.read(written, always_dict=True)["particles"]
    pb = starfile.read(other, always_dict=True)["particles"]
    assert not np.allclose(pa["rlnDefocusU"], pb["rlnDefocusU"])


def test_existing_outputs_are_kept_unless_overwrite(written: Path, tmp_path: Path) -> None:
    out = tmp_path / "dup"
    _simulate(out, n_per_model=1, junk_fraction=0.0)
    before = (out / "particles.star").read_text()
    with pytest.raises(FileExistsError, match="particles"):
        _simulate(out, n_per_model=2, junk_fraction=0.0)
    assert (out / "particles.star").read_text() == before
    _simulate(out, n_per_model=2, junk_fraction=0.0, overwrite=True)
    assert len(starfile.read(out / "particles.star", always_dict=True)["particles"]) == 4
    assert sorted(p.name for p in out.iterdir()) == ["particles.mrcs", "particles.star"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"junk_fraction": 1.0}, ValueError, "junk_fraction"),
        ({"n_per_model": 0, "junk_fraction": 0.0}, ValueError, "nothing to simulate"),
        ({"box_size": 63}, ValueError, "box_size"),
        ({"box_size": 32}, ValueError, "too large for the box"),
        ({"dose_e_per_angstrom2": 0.0}, ValueError, "dose"),
        ({"wobble": 3}, TypeError, "wobble"),
    ],
)
def test_invalid_settings_are_refused_before_writing(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _simulate(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad" / "particles.mrcs").exists()


def test_duplicate_model_names_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        plan_particles(["a", "a"], n_per_model=1, junk_fraction=0.0, config=SimulationConfig())
