"""Assemble docs/benchmarks.md from the results of the benchmark scripts.

Usage::

    python benchmarks/quality.py --overwrite
    python benchmarks/vs_aspire.py --overwrite
    python benchmarks/throughput.py --large --overwrite
    python benchmarks/atlas_projection.py --overwrite
    python benchmarks/make_report.py

Copies each script's Markdown table from ``benchmarks/results/`` into
``docs/benchmarks.md`` and writes a summary of the goals from their JSON, so the
document always shows the numbers of one run of all scripts.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

from cryomanifold._atomic import atomic_path  # noqa: E402

INTRO = """# Benchmarks

Rerunnable scripts in `benchmarks/` write JSON (all numbers, with machine and library
versions) and a Markdown table into `benchmarks/results/`; this page is assembled
from those files by `benchmarks/make_report.py`, so every table below comes from one
run of each script. Run the scripts one at a time: each uses all cores. The machine is
a shared 2-core one, so timings are indicative; speed claims are ratios against a
baseline measured in the same run.

Metrics (`cryomanifold.metrics`): species ARI / NMI score class-majority labels
against the truth (over-clustering is not penalised; all junk kinds count as one
label); junk precision / recall / F1 score the particles called junk (the run's
per-particle `_cmJunk` when it writes one, else the junk flag of their class);
view coherence is the reflection- and point-group-reduced angle between true viewing
directions (`view_coherence_deg`, Zhao & Singer's score), within classes and between
feature-space neighbours, with the level expected by chance; class-average resolution
is the FRC = 0.5 (and 0.143) crossing (`frc_resolution_angstrom`) of each class
average against the CTF-free projection at the class's symmetry-aware mean true view
(`mean_viewing_direction`), aligned to it (the quality runs use 4 Å/px, so 8 Å is
Nyquist). The simulator's `paper` and `realistic` imaging presets are described in
[simulate.md](simulate.md).
"""

SECTIONS = [
    (
        "quality",
        "Classification quality",
        "python benchmarks/quality.py --overwrite   # ~20 min of CPU; stacks cached in --work",
    ),
    (
        "quality_refine",
        "Classification quality with the second stage (run --refine)",
        "python benchmarks/quality.py --presets realistic --refine --no-betagal "
        "--name quality_refine --overwrite   # ~40 min on 2 cores; stacks cached in --work",
    ),
    (
        "quality_pair",
        "Classification quality: T20S + rubisco at the earlier settings",
        "python benchmarks/quality.py --species 3j9i 1bxn --doses 20 --box 256 --pixel-size 1.0 "
        "--run-box 64 --n-per-model 1500 --no-betagal --name quality_pair --overwrite",
    ),
    (
        "real_junk",
        "Per-particle junk call on real labels",
        "python benchmarks/real_junk.py --overwrite   # about 10 min on 2 cores",
    ),
    (
        "vs_aspire",
        "ASPIRE comparison",
        "pip install -e '.[bench]' && python benchmarks/vs_aspire.py --overwrite   # about 12 min",
    ),
    (
        "features_speed",
        "Featurisation speed against its floor",
        "python benchmarks/features_speed.py --overwrite   # about 3 min",
    ),
    (
        "scale",
        "Scale: staged runs from 10^4 to 10^6 particles",
        "python benchmarks/scale.py --work DIR --million --overwrite   # about 1 h; 12 GB of disk",
    ),
    (
        "scale_300k",
        "Scale: the 300,000-particle row again, after the junk-measure speed-up",
        "python benchmarks/scale.py --work DIR --sizes 300000 --no-fit-study --no-dask "
        "--name scale_300k --overwrite   # about 6 min",
    ),
    (
        "throughput",
        "Throughput",
        "python benchmarks/throughput.py --large --overwrite   # 100,000 particles with --large",
    ),
    (
        "atlas_render",
        "Atlas rendering",
        "python benchmarks/atlas_render.py   # needs chromium and playwright",
    ),
    (
        "atlas_projection",
        "Projection into an existing map",
        "python benchmarks/atlas_projection.py --overwrite   # about 4 min; simulations cached",
    ),
]


def _body(name: str) -> str:
    """The script's Markdown without its title, headings demoted one level."""
    path = RESULTS / f"{name}.md"
    if not path.is_file():
        return f"_No results: run the script ({path.name} is missing)._\n"
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    text = "\n".join("#" + ln if ln.startswith("#") else ln for ln in lines).strip() + "\n"
    # images sit beside the results (or in docs/img): make their links relative to docs/
    text = text.replace("](../../docs/", "](")
    return re.sub(r"\]\((?!http|/|\.\./|img/)([^)]+\.png)\)", r"](../benchmarks/results/\1)", text)


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _goals() -> list[str]:
    out = []
    for name, label in (("quality", "first stage"), ("quality_refine", "with --refine")):
        q = _load(name)
        if not q:
            continue
        runs = [r for r in q["runs"].values() if r.get("preset") == "realistic"]
        runs = [r for r in runs if r["dose"] >= q.get("goal_min_dose", 20.0)]
        if runs:
            doses = f"{min(r['dose'] for r in runs):g}-{max(r['dose'] for r in runs):g} e/Å²"
            ari = min(r["species_ari"] for r in runs)
            f1 = min(r["junk_f1"] for r in runs)
            res = max(r["class_frc05_median_angstrom"] for r in runs)
            g = q["goals"]
            out.append(
                f"- Realistic imaging, {doses}, {label}: species ARI ≥ {g['species_ari']}: "
                f"worst {ari:.3f} ({'met' if ari >= g['species_ari'] else 'NOT met'}); junk F1 "
                f"≥ {g['junk_f1']}: worst {f1:.3f} "
                f"({'met' if f1 >= g['junk_f1'] else 'NOT met'}); "
                f"median class-average FRC-0.5 < {g['class_frc05_median_angstrom']:g} Å: "
                f"worst {res:.1f} Å "
                f"({'met' if res < g['class_frc05_median_angstrom'] else 'NOT met'})."
            )
    fs = _load("features_speed")
    if fs:
        g = fs["goals"]
        best = min(fs["layouts"], key=lambda r: r["whole_over_floor"])
        core = min(r["core_over_floor"] for r in fs["layouts"])
        feats = best.get("features_over_floor", float("nan"))
        out.append(
            f"- Feature stage ≤ {g['whole_over_floor']:g}x its floor (read + FFT): "
            f"{best['whole_over_floor']:.1f}x with the per-particle junk measures "
            f"({'met' if best['whole_over_floor'] <= g['whole_over_floor'] else 'NOT met'}), "
            f"{feats:.1f}x without them; core ≤ {g['core_over_floor']:g}x: {core:.1f}x "
            f"({'met' if core <= g['core_over_floor'] else 'NOT met'})."
        )
    for name in ("scale", "scale_300k"):
        rerun = _load(name)
        for row in rerun["growth"] if rerun else []:
            n = row["n_particles"]
            limit = {300_000: (300, 3 * 1024), 1_000_000: (1200, 6 * 1024)}.get(n)
            if limit:
                ok = row["wall_s"] <= limit[0] and row["peak_rss_mib"] <= limit[1]
                out.append(
                    f"- {n:,} particles end to end ≤ {limit[0] // 60} min and "
                    f"≤ {limit[1] // 1024} GB ({name}.md): {row['wall_s']:.0f} s, "
                    f"{row['peak_rss_mib'] / 1024:.1f} GB ({'met' if ok else 'NOT met'})."
                )
    sc = _load("scale")
    if sc:
        d = sc["dask"]
        sp = d["features_speedup_2_over_1_worker"]
        out.append(
            f"- Featurisation with 2 Dask workers ≥ 1.7x one worker: {sp:.2f}x "
            f"({'met' if sp >= 1.7 else 'NOT met'}); same classes as the threaded run: "
            f"{d['two_workers_same_classes_as_threads']}."
        )
    j = _load("real_junk")
    if j:
        r, g = j["real"], j["goals"]
        ok = r["precision"] >= g["precision"] and r["recall"] >= g["recall"]
        out.append(
            f"- Per-particle junk call on real β-gal labels: precision {r['precision']:.3f} "
            f"(goal ≥ {g['precision']}), recall {r['recall']:.3f} (goal ≥ {g['recall']}): "
            f"{'met' if ok else 'NOT met'}; pure noise flagged {j['noise']['flagged']:.1%} "
            f"(goal ≥ {g['noise_flagged']:.0%}); pure-noise class averages shown as a particle "
            f"{j['noise'].get('classes_shown', j['noise']['classes_consistent'])} (goal 0); "
            f"Jaccard of junk sets over seeds {j['stability']['jaccard_min']:.2f} (goal ≥ "
            f"{g['jaccard']}); simulated junk F1 "
            + ", ".join(f"{s['f1']:.3f} ({k})" for k, s in j["simulated"].items())
            + f" (goal ≥ {g['sim_f1']})."
        )
    a = _load("vs_aspire")
    if a:
        out += [f"- ASPIRE, {g}" for g in a.get("goals", [])]
    p = _load("atlas_projection")
    if p:
        out += [
            f"- Projection: {goal} ({'met' if ok else 'NOT met'})."
            for goal, ok in p.get("goals", {}).items()
        ]
    return out


def main() -> int:
    """Write docs/benchmarks.md; returns the exit code."""
    parts = [INTRO, "## Goals\n", "\n".join(_goals()) + "\n"]
    for name, title, command in SECTIONS:
        parts += [f"## {title}\n", f"Reproduce:\n\n```\n{command}\n```\n", _body(name)]
    with atomic_path(ROOT / "docs" / "benchmarks.md") as tmp:
        tmp.write_text("\n".join(parts))
    print(f"wrote {ROOT / 'docs' / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
