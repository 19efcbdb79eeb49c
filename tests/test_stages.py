"""The staged pipeline: resume, recluster, the folder lock, and the Dask schedulers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

import cryomanifold.stages.averages as averages_stage
import cryomanifold.stages.features as features_stage
from cryomanifold.pipeline import Execution, RunConfig, RunFolderError, recluster, run
from cryomanifold.stages.folder import RunFolder
from synthetic import blob_dataset, write_relion

CFG = RunConfig(seed=3, batch_size=64, progress=False, atlas=False, n_classes=4, max_members=40)


class Injected(RuntimeError):
    pass


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    images, truth, _ = blob_dataset(n_per_species=90, n_junk=60, noise=0.5, seed=5)
    return write_relion(tmp_path_factory.mktemp("proj"), images, truth)


#: CHUNK_BYTES for chunks of one batch of CFG (64 float32 images of 64 px)
ONE_BATCH = 64 * 4 * 64 * 64


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # several chunks of one batch each, so that a run can stop between chunks
    monkeypatch.setattr(features_stage, "CHUNK_BYTES", ONE_BATCH)


def _same(a: Path, b: Path) -> None:
    da, db = _digest(a), _digest(b)
    assert {k for k in da if da[k] != db[k]} == set()


def _digest(out: Path) -> dict[str, str]:
    """What must be identical between two runs: classes, map, junk, averages, model."""
    parts = starfile.read(out / "particles.star", always_dict=True)["particles"]
    cols = ["rlnClassNumber", "cmClassProbability", "cmUMAP1", "cmUMAP2", "cmJunkScore", "cmJunk"]
    out_d = {c: hashlib.sha256(parts[c].to_numpy().tobytes()).hexdigest() for c in cols}
    with mrcfile.open(out / "class_averages.mrcs") as m:
        out_d["averages"] = hashlib.sha256(np.ascontiguousarray(m.data).tobytes()).hexdigest()
    for name in ("features.npy", "embedding.npy", "classes.csv", "model/reference_embedding.npy"):
        out_d[name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    return out_d


@pytest.fixture(scope="module")
def reference_run(project, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features_stage, "CHUNK_BYTES", ONE_BATCH)
        run(project, out, CFG)
    return out


def _fail_on(monkeypatch, module, name, when):
    real = getattr(module, name)

    def wrapper(task, settings):
        if when(task):
            raise Injected(f"injected failure in {name}")
        return real(task, settings)

    monkeypatch.setattr(module, name, wrapper)


def test_resume_after_failure_mid_features(project, reference_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen: list[int] = []
    # the fourth chunk to start fails (dask chooses the order)
    _fail_on(
        monkeypatch,
        features_stage,
        "featurize_chunk",
        lambda t: len(seen) == 3 or seen.append(t.start),
    )
    with pytest.raises(Injected):
        run(project, out, CFG)
    assert not (out / "run.json").exists()  # clearly incomplete
    written = sorted(p.name for p in (out / "stages" / "features").glob("chunk_*.npz"))
    n_chunks = len(json.loads((out / "stages" / "state.json").read_text())["chunks"])
    assert n_chunks == 4 and 0 < len(written) < n_chunks
    monkeypatch.undo()
    monkeypatch.setattr(features_stage, "CHUNK_BYTES", ONE_BATCH)
    calls = []
    real = features_stage.featurize_chunk
    monkeypatch.setattr(
        features_stage, "featurize_chunk", lambda t, s: calls.append(t.start) or real(t, s)
    )
    run(project, out, CFG, resume=True)
    done = {int(w[6:16]) for w in written}
    # only chunks not written before are computed (a chunk still in flight when the
    # failure was raised may land afterwards: it is then neither listed nor redone)
    assert 0 < len(calls) < n_chunks and not done & set(calls)
    _same(out, reference_run)


def test_resume_after_failure_mid_averages(project, reference_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fail_on(monkeypatch, averages_stage, "average_class", lambda t: t.label == 2)
    with pytest.raises(Injected):
        run(project, out, CFG)
    state = json.loads((out / "stages" / "state.json").read_text())
    assert set(state["stages"]) == {"features", "fit", "embed"}
    monkeypatch.undo()
    monkeypatch.setattr(features_stage, "CHUNK_BYTES", ONE_BATCH)
    monkeypatch.setattr(features_stage, "run_features", _must_not_run)
    run(project, out, CFG, resume=True)
    _same(out, reference_run)


def _must_not_run(*args, **kwargs):
    raise AssertionError("the feature stage was entered")


def test_resume_refuses_other_options_and_missing_runs(project, reference_run, tmp_path):
    with pytest.raises(RunFolderError, match="n_classes"):
        run(project, reference_run, RunConfig(**{**CFG.as_dict(), "n_classes": 5}), resume=True)
    with pytest.raises(RunFolderError, match="no interrupted run"):
        run(project, tmp_path / "new", CFG, resume=True)


def test_recluster_reuses_features_and_map(reference_run, tmp_path, monkeypatch):
    monkeypatch.setattr(features_stage, "run_features", _must_not_run)
    out = tmp_path / "k2"
    res = recluster(reference_run, out, 2)
    assert json.loads((out / "run.json").read_text())["n_classes"] == 2
    assert set(np.unique(res.labels)) == {0, 1}
    np.testing.assert_array_equal(
        np.load(out / "embedding.npy"), np.load(reference_run / "embedding.npy")
    )
    assert (out / "features.npy").read_bytes() == (reference_run / "features.npy").read_bytes()


def test_cli_recluster_and_resume_of_a_finished_run(reference_run, project, tmp_path, capsys):
    from cryomanifold.cli import main as cli_main

    out = tmp_path / "k3"
    assert cli_main(["recluster", str(reference_run), "--classes", "3", "--out", str(out)]) == 0
    assert "-> 3 classes" in capsys.readouterr().out
    # resuming a complete run redoes only the outputs, with the same classes
    before = _digest(out)
    assert cli_main(["run", str(project), "--out", str(out), "--resume", "--quiet"]) == 1
    assert "started with other options" in capsys.readouterr().err  # n_classes differs
    assert _digest(out) == before


def test_lock_refuses_a_second_writer(project, tmp_path):
    out = tmp_path / "run"
    with RunFolder(out).locked(), pytest.raises(RunFolderError, match="in use"):
        run(project, out, CFG, overwrite=True)
    run(project, out, CFG, overwrite=True)  # free again once the holder is done
    assert (out / "run.json").is_file()


def test_overwrite_removes_stale_files_but_not_others(project, reference_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "atlas.html").write_text("stale")
    (out / ".map.png.abc.tmp.png").write_text("leftover")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        run(project, out, CFG)
    run(project, out, CFG, overwrite=True)
    assert not (out / "atlas.html").exists()  # atlas=False in CFG: the stale one is gone
    assert not list(out.glob(".*.tmp*"))
    assert (out / "notes.txt").read_text() == "mine"


def test_refuses_an_input_inside_its_own_outputs(project, tmp_path):
    out = project.parent
    with pytest.raises(RunFolderError, match="inside the output folder"):
        run(project, out, CFG, overwrite=True)


def test_local_cluster_equals_threads(project, reference_run, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "run"
    run(project, out, CFG, execution=Execution(workers=2))
    assert json.loads((out / "run.json").read_text())["execution"]["kind"] == "local-cluster"
    _same(out, reference_run)


def test_two_runs_into_one_folder_through_the_cli(project, tmp_path, capsys):
    from cryomanifold.cli import main as cli_main

    out = tmp_path / "run"
    with RunFolder(out).locked():
        status = cli_main(["run", str(project), "--out", str(out), "--overwrite", "--quiet"])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cryomanifold run: error: ") and "in use by" in err[-1]
    assert not (out / "run.json").exists()


def test_disk_full_during_a_run_names_the_file_and_leaves_it_incomplete(
    project, tmp_path, monkeypatch, capsys
):
    import errno

    from cryomanifold.cli import main as cli_main

    real = np.savez

    def full(file, *args, **kwargs):
        if "embed" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, *args, **kwargs)

    monkeypatch.setattr(np, "savez", full)
    out = tmp_path / "run"
    status = cli_main(["run", str(project), "--out", str(out), "--quiet", "--classes", "3"])
    assert status == 1
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("cryomanifold")]
    assert len(line) == 1 and "embed.npz" in line[0] and "space" in line[0].lower()
    assert not (out / "run.json").exists()
    assert not list((out / "stages").glob(".*.tmp*"))  # no temporary file left


def test_ctrl_c_during_a_run_leaves_the_folder_incomplete(project, tmp_path, monkeypatch, capsys):
    from cryomanifold.cli import main as cli_main

    def interrupted(task, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(averages_stage, "average_class", interrupted)
    out = tmp_path / "run"
    status = cli_main(["run", str(project), "--out", str(out), "--quiet", "--classes", "3"])
    assert status == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "interrupted" in err[0]
    assert not (out / "run.json").exists()
    state = json.loads((out / "stages" / "state.json").read_text())
    assert "averages" not in state["stages"]  # resumable from there


def test_feature_chunks_stay_near_their_byte_budget(monkeypatch):
    """A chunk holds about CHUNK_BYTES of images whatever the box: whole batches of
    small images, fewer than a batch of large ones (1024 images of 256 px are 268 MB)."""
    from cryomanifold.stages.features import plan_chunks

    CHUNK_BYTES = 64 * 2**20
    monkeypatch.setattr(features_stage, "CHUNK_BYTES", CHUNK_BYTES)

    small = plan_chunks(100_000, 64, 1024)
    assert all((b - a) % 1024 == 0 for a, b in small[:-1])
    assert (small[0][1] - small[0][0]) * 4 * 64 * 64 <= CHUNK_BYTES
    large = plan_chunks(2000, 256, 1024)
    assert max(b - a for a, b in large) * 4 * 256 * 256 <= CHUNK_BYTES
    assert large[0] == (0, large[0][1]) and large[-1][1] == 2000
    assert all(a == b_prev for (a, _), (_, b_prev) in zip(large[1:], large[:-1], strict=True))
