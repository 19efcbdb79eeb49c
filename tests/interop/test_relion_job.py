"""The RELION External job: its files (pure) and a real run through relion_pipeliner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import starfile

from cryomanifold.cli import main as cli_main
from cryomanifold.interop.relion_job import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    mark_exit_status,
    output_nodes_text,
    pipeline_style,
    write_output_nodes,
)
from synthetic import blob_dataset, write_relion

NODES = [("External/job003/run_it000_data.star", "particles")]
NODES += [("External/job003/run_it000_optimiser.star", "optimiser")]
NODES += [("External/job003/run_it000_model.star", "model")]


def _read_nodes(text: str, tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "nodes.star"
    path.write_text(text)
    table: pd.DataFrame = starfile.read(path, always_dict=True)["output_nodes"]
    return table


def test_output_nodes_per_relion_version(tmp_path: Path) -> None:
    v3 = _read_nodes(output_nodes_text(NODES, "3"), tmp_path)
    assert list(v3.columns) == ["rlnPipeLineNodeName", "rlnPipeLineNodeType"]
    assert v3["rlnPipeLineNodeType"].tolist() == [3, 9, 8]
    v4 = _read_nodes(output_nodes_text(NODES, "4"), tmp_path)
    assert list(v4.columns) == ["rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel"]
    # RELION 4/5 have no model-file node: the Select job takes the optimiser file
    assert v4["rlnPipeLineNodeName"].tolist() == [n for n, _ in NODES[:2]]
    assert v4["rlnPipeLineNodeTypeLabel"].tolist() == [
        "ParticleGroupMetadata.star.relion.class2d",
        "OptimiserData.star.relion.class2d",
    ]
    both = _read_nodes(output_nodes_text(NODES, "unknown"), tmp_path)
    assert len(both) == 2 and both["rlnPipeLineNodeType"].tolist() == [3, 9]
    with pytest.raises(ValueError, match="spaces"):
        output_nodes_text([("a b.star", "particles")], "3")


def test_pipeline_style_and_node_paths(relion_project: Path) -> None:
    assert pipeline_style(relion_project) == "unknown"  # no node yet
    assert pipeline_style(relion_project / "nowhere") == "unknown"
    pipeline = relion_project / "default_pipeline.star"
    pipeline.write_text(
        pipeline.read_text() + "\nloop_\n_rlnPipeLineNodeName #1\n"
        "_rlnPipeLineNodeType #2\nparts.star 3\n"
    )
    assert pipeline_style(relion_project) == "3"
    pipeline.write_text(
        "data_pipeline_nodes\nloop_\n_rlnPipeLineNodeName #1\n_rlnPipeLineNodeTypeLabel #2\n"
    )
    assert pipeline_style(relion_project) == "4"
    job = relion_project / "External/job003"
    job.mkdir(parents=True)
    out = write_output_nodes(
        job, [(job / "run_it000_optimiser.star", "optimiser")], project_dir=relion_project
    )
    table = starfile.read(out, always_dict=True)["output_nodes"]
    assert table["rlnPipeLineNodeName"].tolist() == ["External/job003/run_it000_optimiser.star"]


def test_exit_files(tmp_path: Path) -> None:
    job = tmp_path / "External/job001"
    mark_exit_status(job, success=False)
    assert (job / EXIT_FAILURE).is_file()
    mark_exit_status(job, success=True)
    assert (job / EXIT_SUCCESS).is_file() and not (job / EXIT_FAILURE).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Input particles"),
        (["--in_parts", "missing.star"], "missing.star"),
        (["--in_parts", "p.star", "--bogus", "1"], "--bogus"),
        (["--in_parts", "p.star", "--in_mics", "m.star"], "--in_mics"),
    ],
)
def test_failures_end_with_the_failure_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "External/job002").mkdir(parents=True)
    (tmp_path / "External/job002" / EXIT_SUCCESS).touch()  # from an earlier attempt
    code = cli_main(["relion-external", "--o", "External/job002/", "--j", "1", *args])
    assert code == 1
    assert message in capsys.readouterr().err
    assert (tmp_path / "External/job002" / EXIT_FAILURE).is_file()
    assert not (tmp_path / "External/job002" / EXIT_SUCCESS).exists()


def test_success_writes_relion_files_nodes_and_exit_file(
    relion_project: Path, make_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's own logic, with a fake run standing in for the pipeline."""
    import cryomanifold.pipeline as pipeline

    calls: list[tuple[Any, ...]] = []

    def fake_run(input_path: Any, out_dir: Any, config: Any, *, overwrite: bool) -> Any:
        calls.append((input_path, out_dir, config, overwrite))
        run = make_run(Path(out_dir), n_particles=60, n_classes=3)
        labels = run["labels"] - 1
        return SimpleNamespace(labels=labels, class_junk=np.array([False, True, False]))

    monkeypatch.setattr(pipeline, "run", fake_run)
    monkeypatch.chdir(relion_project)
    (relion_project / "External/job007").mkdir(parents=True)
    (relion_project / "External/job007/job.star").write_text("RELION's own file\n")
    args = ["--o", "External/job007/", "--in_parts", "Extract/job001/particles.star"]
    code = cli_main(["relion-external", *args, "--j", "3", "--classes", "3", "--box", "48"])
    assert code == 0
    (input_path, out_dir, config, overwrite) = calls[0]
    assert Path(out_dir) == Path("External/job007/")
    assert str(input_path) == "Extract/job001/particles.star" and overwrite
    assert config.n_classes == 3 and config.box == 48 and not config.progress
    job = relion_project / "External/job007"
    assert (job / EXIT_SUCCESS).is_file() and not (job / EXIT_FAILURE).exists()
    assert (job / "job.star").read_text() == "RELION's own file\n"
    nodes = starfile.read(job / "RELION_OUTPUT_NODES.star", always_dict=True)["output_nodes"]
    assert nodes["rlnPipeLineNodeName"].tolist() == [
        "External/job007/run_it000_data.star",
        "External/job007/run_it000_optimiser.star",
    ]  # a pipeline without nodes yet: both columns, no model node
    assert set(nodes.columns) == {
        "rlnPipeLineNodeName",
        "rlnPipeLineNodeType",
        "rlnPipeLineNodeTypeLabel",
    }
    model = starfile.read(job / "run_it000_model.star", always_dict=True)["model_classes"]
    assert model["rlnReferenceImage"][0] == "000001@External/job007/class_averages.mrcs"


# ---------------------------------------------------------------- RELION's pipeliner
@pytest.fixture(scope="module")
def relion_tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RELION project with a small synthetic particle set in Extract/job001/."""
    if shutil.which("relion_pipeliner") is None:
        pytest.skip("RELION is not installed (apt-get install relion relion-gui)")
    root = tmp_path_factory.mktemp("relion") / "project"
    images, truth, _ = blob_dataset(n_per_species=40, n_junk=20, noise=0.5, seed=2)
    star = write_relion(root / "Extract/job001", images, truth)
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"]["rlnImageName"] = blocks["particles"]["rlnImageName"].str.replace(
        "@", "@Extract/job001/"
    )
    starfile.write(blocks, star)
    (root / "default_pipeline.star").write_text(
        "\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 1\n"
    )
    return root


def _pipeliner(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    src = Path(__file__).parents[2] / "src"
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    # the External job's executable must be this Python's cryomanifold
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["relion_pipeliner", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _processes(project: Path) -> dict[str, int]:
    table = starfile.read(project / "default_pipeline.star", always_dict=True)
    procs = table["pipeline_processes"]
    names, status = procs["rlnPipeLineProcessName"], procs["rlnPipeLineProcessStatus"]
    return dict(zip(names, status, strict=True))


@pytest.mark.slow
def test_external_job_through_relions_pipeliner(relion_tiny_project: Path) -> None:
    project = relion_tiny_project
    options = (
        "fn_exe == cryomanifold relion-external;in_part == Extract/job001/particles.star;"
        "nr_threads == 2;param1_label == classes;param1_value == 4;"
    )
    added = _pipeliner(project, "--addJob", "External", "--addJobOptions", options)
    assert added.returncode == 0, added.stderr
    ran = _pipeliner(project, "--RunJobs", "External/job001/", "--sec_wait_after", "0")
    job = project / "External/job001"
    log = (job / "run.out").read_text() + (job / "run.err").read_text()
    assert ran.returncode == 0 and (job / EXIT_SUCCESS).is_file(), log
    # RELION ran it as: cryomanifold relion-external --o External/job001/ --in_parts ...
    assert _processes(project)["External/job001/"] == 2  # finished successfully
    nodes = starfile.read(project / "default_pipeline.star", always_dict=True)["pipeline_nodes"]
    by_name = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeType"], strict=True))
    assert by_name["External/job001/run_it000_model.star"] == 8
    assert by_name["External/job001/run_it000_optimiser.star"] == 9
    assert by_name["External/job001/run_it000_data.star"] == 3
    assert (job / "run_it000_data.star").is_symlink()
    model = starfile.read(job / "run_it000_model.star", always_dict=True)["model_classes"]
    assert len(model) == 4  # --classes 4 from the Params tab
    data = starfile.read(job / "run_it000_data.star", always_dict=True)["particles"]
    assert set(np.unique(data["rlnClassNumber"])) <= {1, 2, 3, 4}
    # a Select job accepts the model node as its input
    select = _pipeliner(
        project,
        "--addJob",
        "Select",
        "--addJobOptions",
        "fn_model == External/job001/run_it000_model.star;",
    )
    assert select.returncode == 0, select.stderr
    assert _processes(project)["Select/job002/"] == 1  # scheduled
    edges = starfile.read(project / "default_pipeline.star", always_dict=True)
    inputs = edges["pipeline_input_edges"]
    assert "External/job001/run_it000_model.star" in set(inputs["rlnPipeLineEdgeFromNode"])


@pytest.mark.slow
def test_select_job_then_saves_chosen_classes(relion_tiny_project: Path, xserver: Any) -> None:
    """RELION's pipeliner runs the Select job (relion_display), driven with the mouse."""
    project = relion_tiny_project
    if not (project / "Select/job002/job.star").is_file():
        pytest.skip("needs test_external_job_through_relions_pipeliner first")
    src = Path(__file__).parents[2] / "src"
    xserver.env["PYTHONPATH"] = str(src)
    xserver.start(
        ["relion_pipeliner", "--RunJobs", "Select/job002/", "--sec_wait_after", "0"], cwd=project
    )
    gui = xserver.window("Relion display GUI")
    xserver.click(gui, 435, 320)  # "Display!"
    view = xserver.window("run_it000_model")
    box = 66  # 64-px class averages at scale 1, in tiles with a 1-px frame
    xserver.click(view, box // 2, box // 2)  # class 1
    xserver.click(view, box // 2 + 2 * box, box // 2)  # class 3
    xserver.click(view, box // 2, box // 2, button=3)
    xserver.key("Up", "Up", "Return")  # "Save selected classes"
    end = time.monotonic() + 60  # the job finishes in ~1 s; a loaded machine is slower
    while time.monotonic() < end and _processes(project).get("Select/job002/") != 2:
        time.sleep(0.1)
    assert _processes(project)["Select/job002/"] == 2
    selected = starfile.read(project / "Select/job002/particles.star", always_dict=True)
    data = starfile.read(project / "External/job001/run_it000_data.star", always_dict=True)
    labels = data["particles"]["rlnClassNumber"]
    wanted = data["particles"]["rlnImageName"][labels.isin([1, 3])]
    assert sorted(selected["particles"]["rlnImageName"]) == sorted(wanted)
