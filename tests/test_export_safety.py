"""Export never loses data: it never writes over the run's input nor into the run folder
(``--overwrite`` only replaces earlier exports), and its messages say what is wrong."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cryomanifold.atlas.runfolder import read_run_info
from cryomanifold.cli.export import main as export_main
from cryomanifold.errors import OutputRefusedError
from cryomanifold.export import export_selection, parse_class_list

_spec = importlib.util.spec_from_file_location(
    "cm_export_fake_run", Path(__file__).parent / "atlas" / "fake_run.py"
)
assert _spec is not None and _spec.loader is not None
fake_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_run)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def run_with_input(tmp_path: Path) -> dict[str, Any]:
    """A fake run whose run.json names a real input file beside the run folder."""
    run = fake_run.write_fake_run(tmp_path / "run", n_particles=60, random_state=3)
    data = tmp_path / "data"
    data.mkdir()
    source = data / "particles.star"
    shutil.copy(run["path"] / "particles.star", source)  # stands in for the user's input
    info = json.loads((run["path"] / "run.json").read_text())
    info["input"] = {"path": str(source.resolve()), "kind": "star"}
    (run["path"] / "run.json").write_text(json.dumps(info))
    return {**run, "input": source}


def test_export_refuses_the_runs_input_even_with_overwrite(
    run_with_input: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _hashes(tmp_path)
    source = run_with_input["input"]
    argv = [str(run_with_input["path"]), "--classes", "2", "--out", str(source), "--overwrite"]
    assert export_main(argv) == 1
    err = capsys.readouterr().err
    assert f"{source} is the input of the run" in err and "never replaces" in err
    # also through a relative path and a symbolic link to it
    link = tmp_path / "link.star"
    link.symlink_to(source)
    with pytest.raises(OutputRefusedError, match="input of the run"):
        export_selection(run_with_input["path"], link, class_numbers=[2], overwrite=True)
    link.unlink()
    assert _hashes(tmp_path) == before


@pytest.mark.parametrize("name", ["particles.star", "run.json.star", "new_selection.star"])
def test_export_never_writes_into_the_run_folder(
    run_with_input: dict[str, Any], tmp_path: Path, name: str
) -> None:
    run = run_with_input["path"]
    before = _hashes(tmp_path)
    with pytest.raises(OutputRefusedError, match=r"inside the run folder.*--out .*" + name):
        export_selection(run, run / name, class_numbers=[2], overwrite=True)
    assert _hashes(tmp_path) == before


def test_export_refuses_a_hard_link_to_a_run_file(
    run_with_input: dict[str, Any], tmp_path: Path
) -> None:
    run = run_with_input["path"]
    alias = tmp_path / "alias.star"
    alias.hardlink_to(run / "particles.star")
    before = _hashes(tmp_path)
    with pytest.raises(OutputRefusedError, match="inside the run folder"):
        export_selection(run, alias, class_numbers=[2], overwrite=True)
    assert _hashes(tmp_path) == before


def test_overwrite_replaces_an_earlier_export(
    run_with_input: dict[str, Any], tmp_path: Path
) -> None:
    run = run_with_input["path"]
    out = tmp_path / "exports" / "sel.star"
    first = export_selection(run, out, class_numbers=[2])
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_selection(run, out, class_numbers=[3])
    second = export_selection(run, out, class_numbers=[3], overwrite=True)
    assert first.n_written != second.n_written
    assert sorted(p.name for p in out.parent.iterdir()) == ["sel.star"]  # nothing else


def test_reversed_class_range_says_so() -> None:
    with pytest.raises(ValueError, match=r"the range '3-1' is reversed; write 1-3"):
        parse_class_list("3-1")
    with pytest.raises(ValueError, match="start at 1"):
        parse_class_list("0-2")


def test_not_a_run_folder_message_reads_well(tmp_path: Path) -> None:
    folder = tmp_path / "kil2"
    folder.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        read_run_info(folder)
    assert f"is {folder} the output folder of 'cryomanifold run'?" in str(info.value)
