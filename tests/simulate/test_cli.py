"""``cryomanifold simulate`` in-process."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import pytest
import starfile

from cryomanifold.cli import main as cryomanifold_main
from cryomanifold.cli.simulate import main

SMALL = ["--box", "64", "--pixel-size", "3.0", "--dose", "30", "--seed", "4"]


def test_simulate_writes_the_dataset(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    argv = [
        "--model",
        "builtin:ring_d5",
        "--model",
        "builtin:barrel_d7",
        "--n-per-model",
        "3",
        "--junk-fraction",
        "0.25",
        "--out",
        str(out),
        *SMALL,
    ]
    assert main(argv) == 0
    particles = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert len(particles) == 8
    assert set(particles["cmTruthLabel"]) >= {"ring_d5", "barrel_d7"}
    assert mrcfile.read(out / "particles.mrcs").shape == (8, 64, 64)


def test_errors_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    base = ["--model", "builtin:asym_l", "--n-per-model", "2", "--out", str(out), *SMALL]
    assert main(base) == 0
    assert main(base) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*base, "--overwrite"]) == 0
    assert main([*base[:-8], "--box", "32", "--pixel-size", "3.0", "--overwrite"]) == 1
    assert "too large for the box" in capsys.readouterr().err
    assert main(["--model", "builtin:nope", "--n-per-model", "1", "--out", str(out)]) == 1
    assert "builtin:barrel_d7" in capsys.readouterr().err
    assert (
        main(["--model", str(tmp_path / "missing.pdb"), "--n-per-model", "1", "--out", str(out)])
        == 1
    )
    assert "missing.pdb" in capsys.readouterr().err


def test_dispatch_through_the_cryomanifold_command(tmp_path: Path) -> None:
    out = tmp_path / "via_main"
    assert (
        cryomanifold_main(
            [
                "simulate",
                "--model",
                "builtin:asym_l",
                "--n-per-model",
                "1",
                "--out",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    assert (out / "particles.star").is_file()
    with pytest.raises(SystemExit):
        main(["--n-per-model", "1", "--out", str(out)])  # --model is required


def test_presets_and_imaging_options_reach_the_simulation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--model", "builtin:asym_l", "--n-per-model", "3", *SMALL]
    assert main([*base, "--out", str(tmp_path / "real"), "--preset", "realistic"]) == 0
    particles = starfile.read(tmp_path / "real" / "particles.star", always_dict=True)["particles"]
    assert "rlnCtfBfactor" not in particles  # the realistic preset does not record it
    assert (particles[["rlnOriginXAngst", "rlnOriginYAngst"]].abs() <= 8.0).all().all()
    argv = [
        *base,
        "--out",
        str(tmp_path / "custom"),
        "--preset",
        "realistic",
        "--bfactor",
        "80",
        "--record-bfactor",
        "--shift-max",
        "2",
        "--detector",
        "k3",
    ]
    assert main(argv) == 0
    particles = starfile.read(tmp_path / "custom" / "particles.star", always_dict=True)["particles"]
    assert (particles["rlnCtfBfactor"] == 80.0).all()
    assert (particles[["rlnOriginXAngst", "rlnOriginYAngst"]].abs() <= 2.0).all().all()
    assert main([*base, "--out", str(tmp_path / "bad"), "--bfactor", "1", "2", "3"]) == 1
    assert "--bfactor" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "bad"), "--shift-distribution", "uniform"]) == 1
    assert "shift_max" in capsys.readouterr().err


def test_an_invalid_count_is_reported_before_a_model_too_large_for_the_box(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", "builtin:barrel_d7", "--n-per-model", "-5", "--out", str(tmp_path / "x")]
    assert main([*argv, "--box", "32", "--pixel-size", "1.0"]) == 1
    err = capsys.readouterr().err
    assert "n_per_model" in err and "too large" not in err
    assert not (tmp_path / "x").exists()
