"""Are the per-particle junk measures and the junk call unchanged against a git ref?

For a change that should only make :func:`cryomanifold.junk_signs.particle_measures`
faster. Computes the measures as the features stage does (``bad_images`` ->
``prepare_images`` to 64 px -> ``particle_measures`` with the CTF and, when the
stack is cropped, the raw images) on

* the 920 real β-galactosidase particles (``../shared/data/real_particles``),
* the simulated stacks of ``benchmarks/features_speed.py`` (64 px float16 with CTF, and
  128 px float32, where the edge stripes are measured on the raw 128 px images),
* a few synthetic edge cases (NaN, inf, constant images, stripes, raw images on a
  large offset),

each with and without a particle diameter, with this working tree and with the
package as of ``--baseline`` (a ``git archive`` of ``src/``, in a subprocess). Reports
whether the per-particle call (:func:`cryomanifold.junk_call.call_particles`: junk
and reason) is identical, and the largest difference of each measure. To put the
differences into scale, ``signal_z`` and ``contrast`` are also computed in float64
from their formulas: the error of each version against float64.

Writes benchmarks/results/junk_measures_check.json and .md.

Usage::

    python benchmarks/junk_measures_check.py --baseline REF [--work DIR] --overwrite
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, machine_info, md_table, write_results

log = logging.getLogger("junk_measures_check")

BETAGAL = SHARED_DATA / "real_particles/betagal_empiar10204_dev/Extract/job009"
DIAMETER_ANGSTROM = 150.0
BOX = 64


def _stacks(work: Path) -> dict[str, Path]:
    from features_speed import _float16_copy, _simulate

    stacks = {"real beta-gal": BETAGAL / "particles_ctf_fixed.star"}
    stacks["sim 64 px float16"] = _float16_copy(_simulate(work, 64, 3.5, 600, 0))
    stacks["sim 128 px (raw stripes)"] = _simulate(work, 128, 1.75, 600, 0)
    return {k: v for k, v in stacks.items() if v.exists()}


def _prepared(star: Path) -> list[tuple[Any, ...]]:
    """(prepared, apix, ctf, raw or None) of each batch, as the features stage makes them."""
    from cryomanifold.io import read_particles
    from cryomanifold.preprocess import bad_images, prepare_images

    stack = read_particles(star)
    out = []
    for idx, imgs in stack.batches(1024):
        bad = bad_images(imgs)
        if bad.any():
            imgs[bad] = 0.0
        apix0 = stack.pixel_size_angstrom
        prepared, apix = prepare_images(imgs, box=BOX, pixel_size_angstrom=apix0)
        ctf = stack.ctf.subset(idx) if stack.ctf is not None else None
        out.append((prepared, apix, ctf, imgs if imgs.shape[-1] != BOX else None))
    return out


def _edge_cases() -> list[tuple[Any, ...]]:
    from cryomanifold.ctf import CTFParams

    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 48, 48)).astype(np.float32)
    x[0, 5, 7], x[1, 0, 0], x[2], x[3] = np.nan, np.inf, 0.0, 0.1
    x[4, :6] = x[4, 6]  # stripes at the top
    x[5, :, -9:] = x[5, :, -10:-9]  # and on the right
    x[6, 20:28, 20:28] += 30.0  # a dense shard
    x[7] += np.linspace(-3, 3, 48, dtype=np.float32)[None, :]  # a gradient
    raw = rng.standard_normal((40, 96, 96)).astype(np.float32)
    raw[8, :10] = raw[8, 10]
    raw[9, 3, 3] = np.nan
    raw[10:20] += 1000.0  # not normalised
    raw[10, -12:] = raw[10, -13]
    ctf = CTFParams(
        defocus_u_angstrom=np.linspace(8000, 25000, 40),
        defocus_v_angstrom=np.linspace(8500, 26000, 40),
        defocus_angle_deg=np.linspace(0, 170, 40),
        voltage_kv=np.full(40, 300.0),
        cs_mm=np.full(40, 2.7),
        amplitude_contrast=np.full(40, 0.1),
    )
    return [(x, 2.0, ctf, raw), (x, 2.0, None, None)]


def _measures(batches: list[tuple[Any, ...]], radius_angstrom: float | None) -> dict[str, Any]:
    from cryomanifold.junk_signs import particle_measures

    parts: dict[str, list[npt.NDArray[np.float32]]] = {}
    for prepared, apix, ctf, raw in batches:
        radius = None if radius_angstrom is None else radius_angstrom / apix
        m = particle_measures(
            prepared, pixel_size_angstrom=apix, radius_px=radius, ctf=ctf, raw=raw
        )
        for key, value in m.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(v) for key, v in parts.items()}


def _sets(work: Path) -> dict[str, tuple[list[tuple[Any, ...]], float | None]]:
    out: dict[str, tuple[list[tuple[Any, ...]], float | None]] = {}
    for name, star in _stacks(work).items():
        batches = _prepared(star)
        out[name] = (batches, None)
        out[f"{name}, {DIAMETER_ANGSTROM:g} Å diameter"] = (batches, DIAMETER_ANGSTROM / 2)
    out["edge cases"] = (_edge_cases(), None)
    return out


def dump(work: Path, path: Path) -> None:
    """The measures of every set with the package on the path, to ``path`` (.npz)."""
    arrays = {}
    for name, (batches, radius) in _sets(work).items():
        for key, value in _measures(batches, radius).items():
            arrays[f"{name}|{key}"] = value
    np.savez(path, **arrays)


# --------------------------------------------------------------------------- float64


def _signal_z64(img: Any, apix: float, ctf: Any, radius_px: float | None) -> npt.NDArray[Any]:
    """signal_z from its formula (see cryomanifold.signal), float64, whole grid."""
    from cryomanifold.ctf import ctf_2d
    from cryomanifold.preprocess import radial_distance
    from cryomanifold.signal import signal_radii

    box = img.shape[-1]
    r_in, r_out = signal_radii(box, radius_px, None)
    ring = np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :]) * box
    filt = ((ring >= 2) & (ring <= box / 2)).astype(float)
    if ctf is not None:
        filt = np.abs(ctf_2d(ctf, box, apix)).astype(np.float64) * filt
    spec = sfft.rfft2(img.astype(np.float64))
    f = sfft.irfft2(spec * filt, s=(box, box))
    r = radial_distance(box)
    regions = (r < r_in, r > r_out)
    t = np.log((f[:, regions[0]] ** 2).mean(axis=1) / (f[:, regions[1]] ** 2).mean(axis=1))
    cols = np.arange(box // 2 + 1)
    mult = np.broadcast_to(np.where((cols == 0) | (2 * cols == box), 1.0, 2.0), ring.shape)
    idx = np.rint(ring).astype(int).ravel()
    counts = np.bincount(idx, mult.ravel())
    power = (np.abs(spec) ** 2 * mult).reshape(len(img), -1)
    profile = np.stack([np.bincount(idx, p, counts.size) for p in power]) / counts
    noise = profile[:, idx].reshape(spec.shape) * filt**2
    cov = sfft.irfft2(noise, s=(box, box)) / box**2
    var = np.zeros(len(img))
    for region in regions:
        ov = sfft.irfft2(np.abs(sfft.rfft2(region.astype(float))) ** 2, s=(box, box))
        var += 2 * (cov**2 * ov).sum(axis=(1, 2)) / (region.sum() * cov[:, 0, 0]) ** 2
    return np.asarray(t / np.sqrt(var))


def _contrast64(img: Any, apix: float, radius_px: float | None) -> npt.NDArray[Any]:
    from cryomanifold.preprocess import radial_distance

    box = img.shape[-1]
    k = np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :]) / apix
    low = sfft.irfft2(sfft.rfft2(img.astype(np.float64)) * (k < 1 / 25.0), s=(box, box))
    r = radial_distance(box)
    inner = r < (0.3 * box if radius_px is None else min(radius_px, 0.42 * box))
    var_in, var_out = low[:, inner].var(axis=1), low[:, r > 0.42 * box].var(axis=1)
    return np.asarray(var_in / np.maximum(var_out, 1e-12))


def reference(batches: list[tuple[Any, ...]], radius_angstrom: float | None) -> dict[str, Any]:
    z, c = [], []
    for prepared, apix, ctf, _ in batches:
        clean = np.nan_to_num(prepared, posinf=0.0, neginf=0.0)
        radius = None if radius_angstrom is None else radius_angstrom / apix
        z.append(_signal_z64(clean, apix, ctf, radius))
        c.append(_contrast64(clean, apix, radius))
    return {"signal_z": np.concatenate(z), "contrast": np.concatenate(c)}


# --------------------------------------------------------------------------- compare


def _difference(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> dict[str, Any]:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same_inf = bool(np.array_equal(np.isfinite(a64), np.isfinite(b64)))
    both = np.isfinite(a64) & np.isfinite(b64)
    d = np.abs(a64[both] - b64[both])
    scale = np.abs(a64[both])
    return {
        "identical": bool(np.array_equal(a, b, equal_nan=True)),
        "non_finite_same": same_inf,
        "max_abs": float(d.max(initial=0.0)),
        "max_rel": float((d / np.maximum(scale, 1e-30)).max(initial=0.0)),
        "max_abs_over_max": float(d.max(initial=0.0) / max(float(scale.max(initial=0.0)), 1e-30)),
    }


def _baseline(ref: str, work: Path) -> dict[str, npt.NDArray[Any]]:
    from features_speed import package_at

    with package_at(ref) as (env, tmp):
        out = tmp / "baseline.npz"
        cmd = [sys.executable, __file__, "--work", str(work), "--_dump", str(out)]
        subprocess.run(cmd, env=env, check=True)
        with np.load(out) as data:
            return {k: data[k] for k in data.files}


def compare(ref: str, work: Path) -> dict[str, Any]:
    from cryomanifold.junk_call import call_particles

    before = _baseline(ref, work)
    results: dict[str, Any] = {}
    for name, (batches, radius) in _sets(work).items():
        after = _measures(batches, radius)
        old: dict[str, Any] = {k: before[f"{name}|{k}"] for k in after}
        row: dict[str, Any] = {"n": int(next(iter(after.values())).size)}
        row["measures"] = {k: _difference(old[k], after[k]) for k in after}
        if name != "edge cases":
            c_old, c_new = call_particles(old), call_particles(after)
            row["call"] = {
                "junk": int(c_new.junk.sum()),
                "junk_identical": bool(np.array_equal(c_old.junk, c_new.junk)),
                "reason_identical": bool(np.array_equal(c_old.reason, c_new.reason)),
                "score_max_abs": float(np.abs(c_old.score - c_new.score).max()),
            }
            exact = reference(batches, radius)
            row["float64"] = {
                k: {
                    "before": _difference(exact[k], old[k])["max_abs"],
                    "after": _difference(exact[k], after[k])["max_abs"],
                }
                for k in exact
            }
        results[name] = row
        log.info("%s: %s", name, row.get("call"))
    return results


def _markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Junk measures against a git ref (benchmarks/junk_measures_check.py)",
        "",
        f"This tree (source commit {m.get('git_commit', '?')[:10]}, modified: "
        f"{', '.join(m.get('git_modified_src', [])) or 'none'}) against git {data['baseline']}. "
        "Measures as the features stage computes them (bad_images -> prepare_images to "
        "64 px -> particle_measures with the CTF, raw images for the stripes when cropped).",
        "",
        "## The per-particle call (junk_call.call_particles)",
        "",
    ]
    rows = []
    for name, row in data["results"].items():
        if "call" in row:
            c = row["call"]
            same = [c["junk_identical"], c["reason_identical"]]
            rows.append([name, row["n"], c["junk"], *same, f"{c['score_max_abs']:.2g}"])
    lines.append(
        md_table(
            ["set", "particles", "junk", "junk identical", "reason identical", "score max |diff|"],
            rows,
        )
    )
    lines += ["", "## Largest difference of each measure (this tree - baseline)", ""]
    keys = list(next(iter(data["results"].values()))["measures"])
    rows = []
    for name, row in data["results"].items():
        cells = []
        for k in keys:
            d = row["measures"][k]
            cells.append(
                "identical"
                if d["identical"]
                else f"{d['max_abs']:.2g} ({d['max_abs_over_max']:.1g} of max; {d['max_rel']:.1g})"
                + ("" if d["non_finite_same"] else " NON-FINITE DIFFER")
            )
        rows.append([name, *cells])
    lines.append(md_table(["set", *keys], rows))
    lines += [
        "",
        "Entries: the largest absolute difference; in brackets as a fraction of the "
        "measure's largest value, and the largest relative difference of one particle "
        "(large only for values near 0: a z-score of 0.005 that moves by 5e-6).",
        "",
        "## Error against float64 (the formulas evaluated in float64)",
        "",
    ]
    rows = []
    for name, row in data["results"].items():
        if "float64" in row:
            f = row["float64"]
            rows.append(
                [name]
                + [f"{f[k]['before']:.2g}" for k in ("signal_z", "contrast")]
                + [f"{f[k]['after']:.2g}" for k in ("signal_z", "contrast")]
            )
    headers = ["set", "signal_z: baseline", "contrast: baseline"]
    lines.append(md_table([*headers, "signal_z: this tree", "contrast: this tree"], rows))
    lines += ["", "Largest absolute error of each version against float64."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", default="main", help="git ref to compare with")
    p.add_argument("--work", type=Path, default=Path("/tmp/cryomanifold_bench/features_speed"))
    p.add_argument("--overwrite", action="store_true", help="replace earlier result files")
    p.add_argument("--_dump", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args._dump:  # the subprocess of _baseline
        dump(args.work, args._dump)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"machine": machine_info(), "baseline": args.baseline}
    data["results"] = compare(args.baseline, args.work)
    paths = write_results("junk_measures_check", data, _markdown(data), overwrite=args.overwrite)
    log.info("wrote %s and %s", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
