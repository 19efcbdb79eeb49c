"""The selection.json format (cryomanifold.atlas.selection)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cryomanifold.atlas.selection import (
    RunMismatchError,
    Selection,
    check_selection_run,
    read_selection,
    selection_from_dict,
    selection_to_dict,
    write_selection,
)

RUN = "ab" * 16


def _doc(**kw: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "format": "cryomanifold-selection",
        "version": 1,
        "run_id": RUN,
        "n_particles": 10,
        "particle_indices": [3, 1, 3],
    }
    doc.update(kw)
    return doc


def test_round_trip(tmp_path: Path) -> None:
    sel = Selection(
        run_id=RUN, n_particles=10, particle_indices=np.array([1, 4]), class_numbers=(2,)
    )
    path = write_selection(tmp_path / "s.json", sel)
    back = read_selection(path)
    assert back.run_id == RUN and back.n_particles == 10 and back.class_numbers == (2,)
    assert back.particle_indices is not None
    np.testing.assert_array_equal(back.particle_indices, [1, 4])
    assert json.loads(path.read_text())["n_selected"] == 2
    with pytest.raises(FileExistsError):
        write_selection(path, sel)


def test_indices_sorted_unique() -> None:
    sel = selection_from_dict(_doc())
    assert sel.particle_indices is not None
    np.testing.assert_array_equal(sel.particle_indices, [1, 3])
    assert selection_to_dict(sel)["particle_indices"] == [1, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a cryomanifold selection"),
        ({"version": 2}, "version 2"),
        ({"run_id": ""}, "run_id"),
        ({"particle_indices": [1, "2"]}, "list of integers"),
        ({"particle_indices": [-1]}, "negative"),
        ({"particle_indices": None}, "neither"),
    ],
)
def test_malformed_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        selection_from_dict(_doc(**change), source="s.json")


def test_read_reports_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        read_selection(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        read_selection(tmp_path / "missing.json")


def test_check_run() -> None:
    sel = selection_from_dict(_doc())
    check_selection_run(sel, run_id=RUN, n_particles=10)
    with pytest.raises(RunMismatchError, match=f"made for run {RUN}.*this run is {'cd' * 16}"):
        check_selection_run(sel, run_id="cd" * 16, n_particles=10)
    with pytest.raises(RunMismatchError, match="10 particles"):
        check_selection_run(sel, run_id=RUN, n_particles=11)
    with pytest.raises(ValueError, match="out of range"):
        check_selection_run(selection_from_dict(_doc(n_particles=None)), run_id=RUN, n_particles=3)
