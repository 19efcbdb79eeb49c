"""Atomic models: reading PDB/mmCIF, assemblies, validation, built-in assemblies."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import gemmi
import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from cryomanifold.simulate import BUILTIN_MODELS, builtin_model, load_model, resolve_model
from cryomanifold.simulate.models import check_fits_box, model_from_arrays
from cryomanifold.simulate.project import make_projector

from .conftest import shared_model

PDB_ATOMS = """\
ATOM      1  N   ALA A   1      10.000  10.000  10.000  1.00 20.00           N
ATOM      2  CA  ALA A   1      11.458  10.000  10.000  1.00 25.00           C
ATOM      3  C   ALA A   1      12.009  11.420  10.000  1.00 30.00           C
ATOM      4  O   ALA A   1      11.251  12.390  10.000  1.00 35.00           O
ATOM      5  FE  HEM A   2      14.000  14.000  12.000  1.00 40.00          FE
"""

BIOMT = """\
REMARK 350 BIOMOLECULE: 1
REMARK 350 APPLY THE FOLLOWING TO CHAINS: A
REMARK 350   BIOMT1   1  1.000000  0.000000  0.000000        0.00000
REMARK 350   BIOMT2   1  0.000000  1.000000  0.000000        0.00000
REMARK 350   BIOMT3   1  0.000000  0.000000  1.000000        0.00000
REMARK 350   BIOMT1   2 -1.000000  0.000000  0.000000        0.00000
REMARK 350   BIOMT2   2  0.000000 -1.000000  0.000000        0.00000
REMARK 350   BIOMT3   2  0.000000  0.000000  1.000000        0.00000
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_pdb_gzip_and_mmcif_give_the_same_centred_model(tmp_path: Path) -> None:
    pdb = _write(tmp_path / "tiny.pdb", PDB_ATOMS + "END\n")
    gz = tmp_path / "tiny.pdb.gz"
    with open(pdb, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    st = gemmi.read_structure(str(pdb))
    st.setup_entities()
    cif = tmp_path / "tiny.cif"
    st.make_mmcif_document().write_file(str(cif))
    models = [load_model(p) for p in (pdb, gz, cif)]
    assert [m.name for m in models] == ["tiny", "tiny", "tiny"]
    for m in models:
        assert m.n_atoms == 5
        assert sorted(m.element_counts()) == ["C", "Fe", "N", "O"]
        np.testing.assert_allclose(m.coords_angstrom, models[0].coords_angstrom, atol=1e-3)
        np.testing.assert_allclose(m.bfactors, [20, 25, 30, 35, 40])
    # centred on the centre of mass (iron weighs most)
    weights = np.array([gemmi.Element(str(e)).weight for e in models[0].elements])
    np.testing.assert_allclose(weights @ models[0].coords_angstrom, 0.0, atol=1e-9)
    raw = np.array(
        [[10, 10, 10], [11.458, 10, 10], [12.009, 11.42, 10], [11.251, 12.39, 10], [14, 14, 12]]
    )
    np.testing.assert_allclose(
        models[0].coords_angstrom - models[0].coords_angstrom[0], raw - raw[0], atol=1e-3
    )
    with pytest.raises(ValueError):  # read-only arrays
        models[0].coords_angstrom[0, 0] = 1.0


def test_biomt_records_build_the_assembly(tmp_path: Path) -> None:
    path = _write(tmp_path / "asu.pdb", BIOMT + PDB_ATOMS + "END\n")
    assembly = load_model(path)
    asu = load_model(path, assembly=None)
    assert asu.n_atoms == 5
    assert assembly.n_atoms == 10
    # the 2-fold about z: the assembly is its own image under (x, y) -> (-x, -y)
    rotated = assembly.coords_angstrom * np.array([-1.0, -1.0, 1.0])
    dist, _ = cKDTree(assembly.coords_angstrom).query(rotated)
    assert dist.max() < 1e-6
    with pytest.raises(ValueError, match="no assembly '7'"):
        load_model(path, assembly="7")
    other_chain = _write(
        tmp_path / "other.pdb", BIOMT.replace("CHAINS: A", "CHAINS: B") + PDB_ATOMS + "END\n"
    )
    with pytest.raises(ValueError, match="not in the file"):
        load_model(other_chain)
    assert load_model(other_chain, assembly=None).n_atoms == 5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("HEADER    NOTHING HERE\nEND\n", "no atoms"),
        (
            PDB_ATOMS.replace("          FE", "          QQ").replace(" FE  HEM", " QQ  HEM"),
            "unknown element",
        ),
        (
            "HETATM    1  O   HOH A   1       1.000   1.000   1.000  1.00 10.00           O\n",
            "no atoms left",
        ),
    ],
)
def test_bad_model_files_give_clear_errors(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path / "bad.pdb", text)
    with pytest.raises(ValueError, match=match) as info:
        load_model(path)
    assert "bad.pdb" in str(info.value)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    garbage = _write(tmp_path / "garbage.cif", "this is not a structure\n")
    with pytest.raises(ValueError, match=r"garbage\.cif: cannot read"):
        load_model(garbage)
    with pytest.raises(FileNotFoundError, match=r"missing\.pdb"):
        load_model(tmp_path / "missing.pdb")


def test_unknown_elements_in_arrays_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        model_from_arrays("m", np.zeros((2, 3)), ["C", "Xx"])
    with pytest.raises(ValueError, match="no atoms"):
        model_from_arrays("m", np.zeros((0, 3)), [])


def test_model_larger_than_the_box_is_refused() -> None:
    model = model_from_arrays("long", [[-60.0, 0, 0], [60.0, 0, 0]], ["C", "C"])
    check_fits_box(model, 128, 1.0)
    with pytest.raises(ValueError, match=r"too large for the box.*at least 120 px"):
        check_fits_box(model, 100, 1.0)
    with pytest.raises(ValueError, match="too large"):
        make_projector(model, box_size=64, pixel_size_angstrom=1.0)
    tiny = model_from_arrays("nm", [[0.0, 0, 0], [0.3, 0, 0]], ["C", "C"])
    with pytest.raises(ValueError, match="in Å"):
        check_fits_box(tiny, 64, 1.0)


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_models_are_deterministic_protein_like_and_centred(name: str) -> None:
    model = builtin_model(name)
    assert resolve_model(f"builtin:{name}") is model
    assert model.name == name
    assert 10_000 < model.n_atoms < 60_000
    assert set(model.element_counts()) <= {"C", "N", "O", "S"}
    assert model.element_counts()["C"] / model.n_atoms == pytest.approx(0.63, abs=0.03)
    np.testing.assert_allclose(model.coords_angstrom.mean(axis=0), 0.0, atol=0.5)
    assert 100 < max(model.extent_angstrom) < 160
    # heavy-atom density of protein: about 0.058 per Å^3 around each atom
    tree = cKDTree(model.coords_angstrom)
    counts = tree.query_ball_point(model.coords_angstrom[::50], r=5.0, return_length=True)
    interior = np.percentile(counts, 80)  # the upper part: spheres fully inside a subunit
    assert interior / (4 / 3 * np.pi * 5.0**3) == pytest.approx(0.058, rel=0.15)


def test_barrel_is_a_d7_four_ring_barrel() -> None:
    model = builtin_model("barrel_d7")
    x, y, z = model.extent_angstrom
    assert 140 < z < 155 and 105 < x < 120 and 105 < y < 120
    tree = cKDTree(model.coords_angstrom)
    seven_fold = Rotation.from_euler("z", 360 / 7, degrees=True).as_matrix()
    two_fold = np.diag([1.0, -1.0, -1.0])
    for op in (seven_fold, two_fold):
        dist, _ = tree.query(model.coords_angstrom @ op.T)
        assert dist.max() < 1e-6
    # not symmetric under an arbitrary rotation
    dist, _ = tree.query(
        model.coords_angstrom @ Rotation.from_euler("z", 360 / 5, degrees=True).as_matrix().T
    )
    assert dist.max() > 1.0


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="builtin:barrel_d7"):
        resolve_model("builtin:nope")


def _symmetric_top(model_coords: np.ndarray) -> np.ndarray:
    centred = model_coords - model_coords.mean(axis=0)
    return np.sort(np.linalg.eigvalsh(centred.T @ centred / len(centred)))


def test_real_t20s_loads_as_a_d7_28mer() -> None:
    model = load_model(shared_model("3j9i_T20S_proteasome.pdb.gz"))
    assert model.n_atoms == 46_228
    assert 170 < max(model.extent_angstrom) < 180
    # D7: the inertia tensor is that of a symmetric top (two equal moments)
    moments = _symmetric_top(model.coords_angstrom)
    assert min(abs(moments[1] - moments[0]), abs(moments[2] - moments[1])) < 0.01 * moments[2]
    check_fits_box(model, 256, 1.0)


def test_real_rubisco_assembly_and_asu_with_biomt_agree() -> None:
    assembly = load_model(shared_model("1bxn_rubisco_L8S8_assembly1.cif.gz"))
    asu_file = shared_model("1bxn_rubisco_asu.pdb.gz")
    asu = load_model(asu_file, assembly=None)
    built = load_model(asu_file)
    assert assembly.n_atoms == 36_288
    assert asu.n_atoms == 18_144
    assert built.n_atoms == 2 * asu.n_atoms == 36_288
    dist, _ = cKDTree(assembly.coords_angstrom).query(built.coords_angstrom)
    assert dist.max() < 0.01
