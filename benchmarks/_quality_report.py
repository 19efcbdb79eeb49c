"""Markdown and plot of benchmarks/quality.py's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import md_table

#: issue 9's goals for the realistic preset
GOALS = {"species_ari": 0.9, "junk_f1": 0.9, "class_frc05_median_angstrom": 12.0}
GOAL_MIN_DOSE = 20.0


def stages(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A run's scored stages: the map alone, and the refine stage when it ran."""
    if "map" not in r:
        return [("map", r)]
    return [("map", {"preset": r["preset"], "dose": r["dose"], **r["map"]}), ("map + refine", r)]


def goal_lines(data: dict[str, Any]) -> list[str]:
    """Issue 9's goals on the realistic runs at or above GOAL_MIN_DOSE."""
    runs = [r for r in data["runs"].values() if r["preset"] == "realistic"]
    runs = [r for r in runs if r["dose"] >= GOAL_MIN_DOSE]
    if not runs:
        return []
    lines = []
    for key, goal in GOALS.items():
        values = [r[key] for r in runs]
        worst = max(values) if key.startswith("class_") else min(values)
        ok = worst <= goal if key.startswith("class_") else worst >= goal
        sign = "<" if key.startswith("class_") else ">="
        lines.append(
            f"- realistic, {GOAL_MIN_DOSE:g}-{max(r['dose'] for r in runs):g} e/Å²: {key} "
            f"{sign} {goal}: worst {worst:.3f} ({'met' if ok else 'NOT met'})"
        )
    return lines


def markdown(data: dict[str, Any], png_name: str = "quality_snr.png") -> str:
    runs = data["runs"]
    lines = [
        "# Classification quality across dose (benchmarks/quality.py)\n",
        f"{', '.join(data['species'].values())} ({data['n_per_model']} particles each) + "
        f"{data['junk_fraction']:.0%} junk; {data['box']} px at {data['pixel_size']} Å/px, "
        "300 kV, defocus 1.0-2.5 µm; two imaging presets of `cryomanifold simulate` "
        "(`realistic`: protein contrast 0.3 of vacuum, shifts up to ±8 Å, B 50-150 Å² "
        "unrecorded, ice 250-600 Å with a slope, 0.5 neighbours per box; `paper`: the "
        f"easy reference). Pipeline: `RunConfig(box={data['run_box']})`, "
        f"{data['run_pixel_size']:.2f} Å/px (Nyquist {2 * data['run_pixel_size']:.0f} Å).\n",
        "Goals (issue 9, realistic preset):\n",
        "\n".join(goal_lines(data)) + "\n",
        f"![quality across dose]({png_name})\n",
    ]
    rows = [
        [
            r["preset"],
            r["dose"],
            stage,
            r["n_classes"],
            r["species_ari"],
            r["species_nmi"],
            r["junk_precision"],
            r["junk_recall"],
            r["junk_f1"],
            r["view_coherence"]["knn_within_10deg"],
            r["class_frc05_median_angstrom"],
            r["class_frc0143_median_angstrom"],
            r["wall_s"],
        ]
        for run in runs.values()
        for stage, r in stages(run)
    ]
    lines.append(
        md_table(
            [
                "preset",
                "dose (e/Å²)",
                "stage",
                "classes",
                "species ARI",
                "NMI",
                "junk P",
                "junk R",
                "junk F1",
                "10-NN within 10°",
                "class FRC-0.5 median (Å)",
                "class FRC-0.143 median (Å)",
                "run wall (s)",
            ],
            rows,
        )
    )
    if data.get("refine"):
        lines.append(
            "\nBoth rows of a dose come from one run (`RunConfig(refine=True)`): 'map' scores "
            "the first stage's classes, per-particle junk call, class averages and invariants "
            "(features.npy) from the run's stage artefacts, with the run's wall time minus the "
            "refine stage; 'map + refine' scores the run's final classes (the junk call is the "
            "first stage's) and refined_features.npy, with the whole wall time. The goals "
            "are read on the final classes.\n"
        )
    lines.append(
        "\n10-NN within 10°: share of each particle's 10 nearest neighbours in the vectors the "
        "classes come from (features.npy; refined_features.npy after the refine stage) "
        "that are of its species and within 10° of its view (reflection- and point-group-"
        "reduced), over all species. Class FRC: each particle class average against the "
        "CTF-free projection at the class's mean view, aligned; median over classes. Against "
        "a noise-free reference 0.5 is the criterion that matches 0.143 between half-sets "
        "(Rosenthal & Henderson 2003); the 0.143 column is lenient, near the noise floor of "
        "single rings at this box. Junk "
        f"calls: {next(iter(runs.values()))['junk_source'] if runs else ''}.\n"
    )
    names = list(data["species"].values())
    lines.append("Per species: class-majority purity / recall.\n")
    rows = [
        [r["preset"], r["dose"]]
        + [
            f"{r['purity_recall'][n]['purity']:.2f} / {r['purity_recall'][n]['recall']:.2f}"
            if n in r["purity_recall"]
            else "-"
            for n in names
        ]
        for r in runs.values()
    ]
    lines.append(md_table(["preset", "dose", *names], rows))
    lines.append(
        "\nPer species: 10-NN within 10° / same-species 10-NN / chance within 10° "
        "(random same-species neighbours).\n"
    )
    rows = []
    for r in runs.values():
        per = r["view_coherence"]["species"]
        rows.append(
            [r["preset"], r["dose"]]
            + [
                f"{per[n]['knn_within_10deg']:.2f} / {per[n]['knn_same_species']:.2f} / "
                f"{per[n]['chance_within_10deg']:.2f}"
                if n in per
                else "-"
                for n in names
            ]
        )
    lines.append(md_table(["preset", "dose", *names], rows))
    lines.append("\nJunk recall per kind.\n")
    kinds = sorted({k for r in runs.values() for k in r["junk_recall_by_kind"]})
    rows = [
        [r["preset"], r["dose"]] + [r["junk_recall_by_kind"].get(k, float("nan")) for k in kinds]
        for r in runs.values()
    ]
    lines.append(md_table(["preset", "dose", *kinds], rows))
    b = data.get("betagal")
    if b:
        lines.append(
            f"\n## Real β-galactosidase (EMPIAR-10204 subset, `{b['input']}`)\n\n"
            f"{b['n_particles']} particles, {b['n_classes']} classes, sizes {b['class_sizes']}; "
            f"junk fraction {b['junk_fraction']:.3f}; wall {b['wall_s']} s. No ground truth.\n"
        )
        rows = [[j["class"], j["size"], j["reason"]] for j in b["junk_classes"]]
        lines.append(
            md_table(["junk class", "size", "reason"], rows) if rows else "No junk classes.\n"
        )
        lines.append("\n![beta-gal map](betagal_map.png)\n")
    m = data["machine"]
    lines.append(
        f"\nMachine: {m['cpu_count']} CPUs, {m['platform']}; total benchmark time "
        f"{data['total_s']} s (simulation {data['simulation_s']} s, of which stacks reused: "
        f"{data['n_reused']}). Source: commit {m['git_commit'][:10]}, modified: "
        f"{', '.join(m.get('git_modified_src', [])) or 'none'}.\n"
    )
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("species ARI", lambda r: r["species_ari"]),
        ("junk F1", lambda r: r["junk_f1"]),
        ("10-NN within 10°", lambda r: r["view_coherence"]["knn_within_10deg"]),
        ("class FRC-0.5 median (Å)", lambda r: r["class_frc05_median_angstrom"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, get) in zip(axes, panels, strict=True):
        for preset, style in (("realistic", "o-"), ("paper", "s--")):
            rs = sorted(
                (r for r in data["runs"].values() if r["preset"] == preset),
                key=lambda r: r["dose"],
            )
            if not rs:
                continue
            if "map" in rs[0]:
                ax.plot(
                    [r["dose"] for r in rs],
                    [get(r["map"]) for r in rs],
                    style,
                    alpha=0.4,
                    label=f"{preset}, map",
                )
            label = f"{preset}, map + refine" if "map" in rs[0] else preset
            ax.plot([r["dose"] for r in rs], [get(r) for r in rs], style, label=label)
        ax.set_title(title)
        ax.set_xlabel("dose (e/Å²)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
