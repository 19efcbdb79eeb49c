"""Export of a run's selection to RELION .star / cryoSPARC .cs (cryomanifold.export)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import starfile

from cryomanifold.atlas.selection import RunMismatchError, Selection, write_selection
from cryomanifold.cli.export import main as export_main
from cryomanifold.export import export_selection, parse_class_list, particle_mask


def _star_rows(run: dict[str, Any]) -> tuple[dict[str, Any], pd.DataFrame]:
    blocks = starfile.read(run["path"] / "particles.star", always_dict=True)
    return blocks, blocks["particles"]


def _assert_rows(out: Path, run: dict[str, Any], mask: np.ndarray) -> None:
    """The exported star holds exactly the masked rows, unchanged, in order, with optics."""
    blocks, table = _star_rows(run)
    exported = starfile.read(out, always_dict=True)
    assert list(exported) == ["optics", "particles"]
    pd.testing.assert_frame_equal(exported["optics"], blocks["optics"])
    expected = table.loc[mask].reset_index(drop=True)
    pd.testing.assert_frame_equal(exported["particles"], expected, check_exact=True)


# ---------------------------------------------------------------- pure selection logic
def test_particle_mask_combines_and_inverts() -> None:
    labels = np.array([1, 2, 3, 1, 2, 3, 4])
    prob = np.array([0.9, 0.2, 0.8, 0.4, 0.95, 0.1, 0.7])
    np.testing.assert_array_equal(
        particle_mask(labels, class_numbers=[1, 3]), [1, 0, 1, 1, 0, 1, 0]
    )
    np.testing.assert_array_equal(
        particle_mask(labels, probabilities=prob, class_numbers=[1, 3], min_probability=0.5),
        [1, 0, 1, 0, 0, 0, 0],
    )
    np.testing.assert_array_equal(
        particle_mask(labels, junk_classes=[2, 4], exclude_junk=True), [1, 0, 1, 1, 0, 1, 0]
    )
    np.testing.assert_array_equal(
        particle_mask(labels, particle_indices=[6, 0]), [1, 0, 0, 0, 0, 0, 1]
    )
    base = particle_mask(labels, probabilities=prob, class_numbers=[2, 4], min_probability=0.3)
    inv = particle_mask(
        labels, probabilities=prob, class_numbers=[2, 4], min_probability=0.3, invert=True
    )
    np.testing.assert_array_equal(inv, ~base)
    with pytest.raises(ValueError, match="particle indices"):
        particle_mask(labels, particle_indices=[7])
    with pytest.raises(ValueError, match="probabilities"):
        particle_mask(labels, min_probability=0.5)


@pytest.mark.parametrize(
    ("text", "expected"), [("3,5,8", (3, 5, 8)), (" 8, 3 ,3", (3, 8)), ("2-4,7", (2, 3, 4, 7))]
)
def test_parse_class_list(text: str, expected: tuple[int, ...]) -> None:
    assert parse_class_list(text) == expected


@pytest.mark.parametrize("text", ["", "a", "0", "5-3", "1,x"])
def test_parse_class_list_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="class"):
        parse_class_list(text)


# ---------------------------------------------------------------- .star round trips
def test_export_classes_round_trip(star_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "sel.star"
    result = export_selection(star_run["path"], out, class_numbers=[1, 3])
    mask = np.isin(star_run["labels"], [1, 3])
    assert result.n_written == mask.sum() > 0
    assert result.n_total == star_run["info"]["n_particles"]
    _assert_rows(out, star_run, mask)


def test_export_invert_gives_complement(star_run: dict[str, Any], tmp_path: Path) -> None:
    a, b = tmp_path / "a.star", tmp_path / "b.star"
    export_selection(star_run["path"], a, class_numbers=[1, 3], min_probability=0.5)
    export_selection(star_run["path"], b, class_numbers=[1, 3], min_probability=0.5, invert=True)
    mask = np.isin(star_run["labels"], [1, 3]) & (star_run["probabilities"] >= 0.5)
    _assert_rows(a, star_run, mask)
    _assert_rows(b, star_run, ~mask)
    names_a = set(starfile.read(a)["particles"]["rlnImageName"])
    names_b = set(starfile.read(b)["particles"]["rlnImageName"])
    assert not names_a & names_b
    assert len(names_a | names_b) == star_run["info"]["n_particles"]


def test_min_probability_filters(star_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "p.star"
    export_selection(star_run["path"], out, min_probability=0.7)
    table = starfile.read(out)["particles"]
    assert (table["cmClassProbability"] >= 0.7).all()
    assert len(table) == (star_run["probabilities"] >= 0.7).sum()
    _assert_rows(out, star_run, star_run["probabilities"] >= 0.7)


def test_exclude_junk_drops_junk_classes(star_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "clean.star"
    export_selection(star_run["path"], out, exclude_junk=True)
    table = starfile.read(out)["particles"]
    assert 2 not in set(table["rlnClassNumber"])  # class 2 is the fake run's junk class
    assert set(table["rlnClassNumber"]) == {1, 3, 4, 5}
    _assert_rows(out, star_run, star_run["labels"] != 2)


def test_selection_file_round_trip(star_run: dict[str, Any], tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = star_run["info"]["n_particles"]
    indices = np.sort(rng.choice(n, 57, replace=False))
    sel = tmp_path / "selection.json"
    write_selection(
        sel, Selection(run_id=star_run["info"]["run_id"], n_particles=n, particle_indices=indices)
    )
    out = tmp_path / "sel.star"
    assert export_main([str(star_run["path"]), "--selection", str(sel), "--out", str(out)]) == 0
    mask = np.zeros(n, dtype=bool)
    mask[indices] = True
    _assert_rows(out, star_run, mask)


def test_class_selection_file_with_exclude_junk(star_run: dict[str, Any], tmp_path: Path) -> None:
    sel = tmp_path / "selection.json"
    write_selection(sel, Selection(run_id=star_run["info"]["run_id"], class_numbers=(2, 4)))
    out = tmp_path / "sel.star"
    export_selection(star_run["path"], out, selection=sel, exclude_junk=True)
    _assert_rows(out, star_run, star_run["labels"] == 4)


# ---------------------------------------------------------------- .cs round trips
def test_export_cs_round_trip(cs_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "sel.cs"
    result = export_selection(cs_run["path"], out, class_numbers=[2, 5], invert=True)
    with (cs_run["path"] / "particles.cs").open("rb") as f:
        records = np.load(f)
    with out.open("rb") as f:
        exported = np.load(f)
    assert out.exists() and not Path(str(out) + ".npy").exists()
    mask = ~np.isin(records["cm/class"], [2, 5])
    assert result.file_format == "cs" and result.n_written == mask.sum()
    assert exported.dtype == records.dtype
    np.testing.assert_array_equal(exported, records[mask])


def test_cs_run_can_export_star(cs_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "sel.star"
    export_selection(cs_run["path"], out, class_numbers=[1])
    _assert_rows(out, cs_run, cs_run["labels"] == 1)


def test_cs_output_needs_cs_input(star_run: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"particles\.cs.*\.star"):
        export_selection(star_run["path"], tmp_path / "x.cs", class_numbers=[1])
    with pytest.raises(ValueError, match=r"\.star.*\.cs"):
        export_selection(star_run["path"], tmp_path / "x.txt", class_numbers=[1])


# ---------------------------------------------------------------- refusals
def test_selection_from_other_run_is_refused(
    star_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "0" * 32
    sel = tmp_path / "selection.json"
    write_selection(sel, Selection(run_id=other, class_numbers=(1,)))
    out = tmp_path / "sel.star"
    with pytest.raises(RunMismatchError, match="another run"):
        export_selection(star_run["path"], out, selection=sel)
    assert export_main([str(star_run["path"]), "--selection", str(sel), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert other in err and star_run["info"]["run_id"] in err and "atlas.html" in err
    assert not out.exists()


def test_existing_output_needs_overwrite(
    star_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sel.star"
    out.write_text("keep me")
    args = [str(star_run["path"]), "--classes", "1", "--out", str(out)]
    assert export_main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert export_main([*args, "--overwrite"]) == 0
    _assert_rows(out, star_run, star_run["labels"] == 1)


def test_unknown_class_and_empty_selection_refused(
    star_run: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"\[9\].*classes\.csv"):
        export_selection(star_run["path"], tmp_path / "a.star", class_numbers=[1, 9])
    with pytest.raises(ValueError, match="nothing written"):
        export_selection(
            star_run["path"], tmp_path / "b.star", class_numbers=[2], exclude_junk=True
        )
    assert not list(tmp_path.glob("*.star"))


def test_cli_logs_count_and_requires_a_choice(
    star_run: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "sel.star"
    with caplog.at_level(logging.INFO, logger="cryomanifold.export"):
        assert (
            export_main(
                [str(star_run["path"]), "--classes", "1,3", "--exclude-junk", "--out", str(out)]
            )
            == 0
        )
    n = int(np.isin(star_run["labels"], [1, 3]).sum())
    assert f"wrote {n} of {star_run['info']['n_particles']} particles" in caplog.text
    with pytest.raises(SystemExit):
        export_main([str(star_run["path"]), "--out", str(tmp_path / "none.star")])
    with pytest.raises(SystemExit):
        export_main(
            [
                str(star_run["path"]),
                "--classes",
                "1",
                "--selection",
                "s.json",
                "--out",
                str(tmp_path / "none.star"),
            ]
        )


def test_relion30_single_block_star(star_run: dict[str, Any], tmp_path: Path) -> None:
    star = star_run["path"] / "particles.star"
    table = starfile.read(star, always_dict=True)["particles"]
    starfile.write({"": table}, star)  # RELION 3.0: one loop, no optics block
    out = tmp_path / "sel.star"
    export_selection(star_run["path"], out, class_numbers=[4])
    exported = starfile.read(out, always_dict=True)
    assert list(exported) == [""]
    expected = table.loc[star_run["labels"] == 4].reset_index(drop=True)
    pd.testing.assert_frame_equal(exported[""], expected, check_exact=True)
