"""The RELION Class2D view of a run folder (cryomanifold.interop.relion).

The pure tests run everywhere; the others drive RELION 3.1's own programs
(relion_star_handler, relion_display under Xvfb) and skip without them.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryomanifold.interop import write_relion_classification
from cryomanifold.interop.relion import NO_RESOLUTION, model_tables
from cryomanifold.interop.relion_job import output_nodes_text

K = 5


def _stacks_for(run: dict[str, Any], root: Path) -> None:
    """Create the stacks that the fake run's particles.star names, under ``root``."""
    names = run["particles"]["rlnImageName"].str.partition("@")
    for stack, group in names.groupby(2):
        n = int(group[0].astype(int).max())
        path = root / stack
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.zeros((n, 8, 8), np.float32))


@pytest.fixture
def project_run(relion_project: Path, make_run: Any) -> dict[str, Any]:
    """A fake run as a RELION External job folder, its stacks present in the project."""
    run = make_run(relion_project / "External/job005", n_particles=240, n_classes=K, box_size=32)
    _stacks_for(run, relion_project)
    run["project"] = relion_project
    return run


def _labels_in(path: Path) -> set[str]:
    blocks = starfile.read(path, always_dict=True)
    out: set[str] = set()
    for block in blocks.values():
        out |= set(block.columns if isinstance(block, pd.DataFrame) else block.keys())
    return out


# ---------------------------------------------------------------- pure
def test_model_tables_one_row_per_class_in_order() -> None:
    classes = pd.DataFrame({"class_number": [1, 2, 3], "resolution_angstrom": [12.5, np.nan, 8]})
    tables = model_tables(
        classes, np.array([10, 0, 30]), stack_name="a/b.mrcs", box_size=64, pixel_size_angstrom=2.5
    )
    table = tables["model_classes"]
    assert table["rlnReferenceImage"].tolist() == [f"00000{c}@a/b.mrcs" for c in (1, 2, 3)]
    np.testing.assert_allclose(table["rlnClassDistribution"], [0.25, 0.0, 0.75])
    np.testing.assert_allclose(table["rlnEstimatedResolution"], [12.5, NO_RESOLUTION, 8.0])
    general = tables["model_general"]
    assert general["rlnNrClasses"] == 3 and general["rlnOriginalImageSize"] == 64
    assert general["rlnPixelSize"] == 2.5 and general["rlnIsHelix"] == 0
    # without a per-class resolution the column is left out, not invented
    tables = model_tables(
        classes[["class_number"]],
        np.array([1, 1, 1]),
        stack_name="s.mrcs",
        box_size=8,
        pixel_size_angstrom=1,
    )
    assert "rlnEstimatedResolution" not in tables["model_classes"].columns


# ---------------------------------------------------------------- the files
def test_in_a_project_data_is_a_link_and_paths_are_project_relative(
    project_run: dict[str, Any],
) -> None:
    job = project_run["path"]
    files = write_relion_classification(job)
    assert files.project_dir == project_run["project"].resolve()
    assert files.data_is_link and files.data.is_symlink()
    assert os.readlink(files.data) == "particles.star"
    optimiser = starfile.read(files.optimiser, always_dict=True)["optimiser_general"]
    assert optimiser["rlnModelStarFile"] == "External/job005/run_it000_model.star"
    model = starfile.read(files.model, always_dict=True)
    table = model["model_classes"]
    assert len(table) == K
    assert table["rlnReferenceImage"].tolist() == [
        f"{c:06d}@External/job005/class_averages.mrcs" for c in range(1, K + 1)
    ]
    counts = np.bincount(project_run["labels"], minlength=K + 1)[1:]
    np.testing.assert_allclose(table["rlnClassDistribution"], counts / counts.sum(), atol=1e-6)
    assert model["model_general"]["rlnNrClasses"] == K
    # every path resolves from the project folder, where RELION runs
    for name in (optimiser["rlnModelStarFile"], table["rlnReferenceImage"][0].split("@")[1]):
        assert (project_run["project"] / name).is_file()
    # a second call replaces the files
    again = write_relion_classification(job)
    assert again == files


def test_every_written_rln_label_is_a_relion_label(
    project_run: dict[str, Any], relion_labels: set[str]
) -> None:
    files = write_relion_classification(project_run["path"])
    nodes = project_run["path"] / "nodes.star"
    nodes.write_text(output_nodes_text([("a.star", "particles"), ("b.star", "model")], "3"))
    written = set().union(*(_labels_in(p) for p in (files.optimiser, files.model, files.data)))
    written |= _labels_in(nodes)
    ours = {label for label in written if label.startswith("rln")}
    assert {"rlnModelStarFile", "rlnReferenceImage", "rlnClassDistribution"} <= ours
    assert ours - relion_labels == set()


def test_outside_a_project_paths_are_rebased_and_mrc_linked(tmp_path: Path, make_run: Any) -> None:
    """A .cs-style run: names relative to the run folder, cryoSPARC .mrc stacks."""
    run = make_run(tmp_path / "runs" / "r1", n_particles=50, n_classes=3)
    stacks = tmp_path / "P1" / "J2" / "extract"
    stacks.mkdir(parents=True)
    for name in ("a_particles.mrc", "b_particles.mrc"):
        with mrcfile.new(stacks / name) as mrc:
            mrc.set_data(np.zeros((30, 8, 8), np.float32))
    blocks = starfile.read(run["path"] / "particles.star", always_dict=True)
    parts = blocks["particles"]
    parts["rlnImageName"] = [
        f"{i % 30 + 1:06d}@../../P1/J2/extract/{'ab'[i % 2]}_particles.mrc" for i in range(50)
    ]
    starfile.write(blocks, run["path"] / "particles.star")

    files = write_relion_classification(run["path"])
    assert files.project_dir == run["path"].resolve() and not files.data_is_link
    data = starfile.read(files.data, always_dict=True)
    names = data["particles"]["rlnImageName"].str.partition("@")
    assert (names[0] == parts["rlnImageName"].str.partition("@")[0]).all()  # same images
    assert set(names[2]) == {"stacks_mrcs/a_particles.mrcs", "stacks_mrcs/b_particles.mrcs"}
    for name in set(names[2]):
        link = run["path"] / name
        assert link.is_symlink() and link.resolve() == (stacks / Path(name).stem).with_suffix(
            ".mrc"
        )
    other = [c for c in parts.columns if c != "rlnImageName"]
    pd.testing.assert_frame_equal(data["particles"][other], parts[other], check_exact=True)
    pd.testing.assert_frame_equal(data["optics"], blocks["optics"])


def test_float16_averages_get_a_float32_stack(tmp_path: Path, make_run: Any) -> None:
    run = make_run(tmp_path / "run", n_particles=40, n_classes=3)
    path = run["path"] / "class_averages.mrcs"
    with mrcfile.open(path) as mrc:
        averages = mrc.data.copy()
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(averages.astype(np.float16))
    files = write_relion_classification(run["path"], root="run_it001")
    assert files.class_stack.name == "run_it001_classes.mrcs"
    with mrcfile.open(files.class_stack) as mrc:
        assert mrc.data.dtype == np.float32 and mrc.data.shape[0] == 3
        np.testing.assert_allclose(mrc.data, averages.astype(np.float16), rtol=1e-3)
    table = starfile.read(files.model, always_dict=True)["model_classes"]
    assert table["rlnReferenceImage"].str.endswith("@run_it001_classes.mrcs").all()


def test_refuses_inconsistent_runs(tmp_path: Path, make_run: Any) -> None:
    run = make_run(tmp_path / "run", n_particles=40, n_classes=3)
    classes = pd.read_csv(run["path"] / "classes.csv")
    classes.loc[2, "class_number"] = 7
    classes.to_csv(run["path"] / "classes.csv", index=False)
    with pytest.raises(ValueError, match=r"classes\.csv.*1\.\.3"):
        write_relion_classification(run["path"])
    (run["path"] / "run.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"run\.json"):
        write_relion_classification(run["path"])


# ---------------------------------------------------------------- RELION's programs
def test_relion_star_handler_reads_the_data_file(project_run: dict[str, Any], relion: str) -> None:
    files = write_relion_classification(project_run["path"])
    out = project_run["project"] / "handled.star"
    proc = subprocess.run(
        [f"{relion}/relion_star_handler", "--i", str(files.data), "--o", str(out)],
        cwd=project_run["project"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = proc.stdout + proc.stderr
    assert "unknown label: rln" not in log  # only our cm* labels are unknown to RELION
    table = starfile.read(out, always_dict=True)["particles"]
    np.testing.assert_array_equal(table["rlnClassNumber"], project_run["labels"])
    assert table["rlnImageName"].tolist() == project_run["particles"]["rlnImageName"].tolist()


def _find(screen: np.ndarray, image: np.ndarray) -> tuple[float, int, int]:
    """Best normalised cross-correlation of ``image`` in ``screen`` (grey): (ncc, x, y)."""
    from scipy.signal import fftconvolve

    grey = screen[..., 0].astype(np.float64)
    t = image - image.mean()
    t /= np.linalg.norm(t)
    ones = np.ones(image.shape)
    num = fftconvolve(grey, t[::-1, ::-1], mode="valid")
    s1 = fftconvolve(grey, ones, mode="valid")
    s2 = fftconvolve(grey * grey, ones, mode="valid")
    norm = np.sqrt(np.maximum(s2 - s1 * s1 / image.size, 1e-9))
    ncc = num / norm
    y, x = np.unravel_index(np.argmax(ncc), ncc.shape)
    return float(ncc[y, x]), int(x), int(y)


def _class_tiles(xserver: Any, averages: np.ndarray) -> list[tuple[float, int, int]]:
    screen = xserver.screenshot()[:300]  # the first row of tiles is at the top
    return [_find(screen, avg) for avg in averages]


def test_relion_display_shows_our_class_averages(
    project_run: dict[str, Any], xserver: Any, tmp_path: Path
) -> None:
    files = write_relion_classification(project_run["path"])
    model = os.path.relpath(files.model, project_run["project"])
    xserver.start(
        ["relion_display", "--i", model, "--class", "--scale", "1"], cwd=project_run["project"]
    )
    xserver.window("run_it000_model")
    with mrcfile.open(project_run["path"] / "class_averages.mrcs") as mrc:
        averages = mrc.data.astype(np.float64)
    found = _class_tiles(xserver, averages)
    from PIL import Image

    Image.fromarray(xserver.screenshot()).save(tmp_path / "relion_display.png")
    # each average is on the screen (RELION stretches the contrast a little), once per
    # tile, in class order from left to right, in one row of equal tiles
    assert min(ncc for ncc, _, _ in found) > 0.9, found
    xs = [x for _, x, _ in found]
    assert len({y for _, _, y in found}) == 1
    assert len(set(np.diff(xs))) == 1 and np.diff(xs)[0] >= averages.shape[-1]


def test_subset_selection_saves_the_particles_of_the_chosen_classes(
    project_run: dict[str, Any], xserver: Any
) -> None:
    """What RELION 3.1's Select job runs, driven with the mouse."""
    files = write_relion_classification(project_run["path"])
    project = project_run["project"]
    model = os.path.relpath(files.model, project)
    (project / "Select/job006").mkdir(parents=True)
    xserver.start(
        [
            "relion_display",
            "--gui",
            "--i",
            model,
            "--allow_save",
            "--fn_parts",
            "Select/job006/particles.star",
        ],
        cwd=project,
    )
    gui = xserver.window("Relion display GUI")
    xserver.click(gui, 435, 320)  # "Display!"
    xserver.window("run_it000_model")
    with mrcfile.open(project_run["path"] / "class_averages.mrcs") as mrc:
        averages = mrc.data.astype(np.float64)
    tiles = _class_tiles(xserver, averages)
    box = averages.shape[-1] // 2
    for c in (2, 4):  # select classes 2 and 4 (left click), then save (right-click menu)
        _, x, y = tiles[c - 1]
        xserver.xdotool("mousemove", str(x + box), str(y + box), "click", "1")
    _, x, y = tiles[0]
    xserver.xdotool("mousemove", str(x + box), str(y + box), "click", "3")
    xserver.key("Up", "Up", "Return")  # the last two items: "Save selected classes", "Quit"
    saved = project / "Select/job006/particles.star"
    for _ in range(100):
        if saved.is_file():
            break
        time.sleep(0.1)
    table = starfile.read(saved, always_dict=True)["particles"]
    wanted = project_run["particles"]["rlnImageName"][np.isin(project_run["labels"], [2, 4])]
    assert sorted(table["rlnImageName"]) == sorted(wanted)
    assert set(table["rlnClassNumber"]) == {2, 4}
