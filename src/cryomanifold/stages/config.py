"""The parameters of a run: one validated config shared by the CLI and the Python API."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunConfig"]

#: Fields that change nothing in the results (they are left out of the resume check).
EXECUTION_FIELDS = frozenset({"atlas", "progress", "batch_size"})


@dataclass(frozen=True)
class RunConfig:
    """Parameters of a run.

    Attributes
    ----------
    box : int
        Box side after Fourier cropping, pixels (images smaller than this are used
        as they are).
    n_classes : int or None
        Number of classes; None chooses it by BIC.
    seed : int
        Random seed of every random step.
    batch_size : int
        Particles per FFT batch inside a task.
    phase_flip : bool
        Phase-flip images for the class averages when the metadata has a CTF.
    ctf_features : bool
        Divide the amplitude spectra by ``max(|CTF|, ctf_floor)`` before the features
        when the metadata has a CTF (see :func:`cryomanifold.features.invariant_features`).
    feature_options : dict
        Keyword arguments of :func:`cryomanifold.features.invariant_features`.
    contrast_weight : float
        Weight in the map of one extra feature, the log centre-over-edge contrast of
        the low-passed image (:func:`cryomanifold.junk_signs.particle_contrast`), relative
        to a typical invariant feature; 0 leaves it out. Without it none of the
        low-contrast real beta-gal images (empty ice, edge stripes) gather in a class
        of their own; with 5 they form one junk class. It is the last column of
        features.npy (the raw log contrast; the model scales it).
    standardize : bool
        Scale each feature to unit variance before PCA. Off by default: with the
        ``sqrt`` feature transform the natural scale down-weights the noisy high
        orders, which gave 0.62 against 0.56 of 10 nearest neighbours within 10° of
        the same view on simulated T20S + rubisco (n_max 20).
    pca_variance, n_neighbors, min_dist : float, int, float
        Manifold parameters (see :class:`cryomanifold.manifold.ParticleManifold`).
    fit_sample : int or None
        UMAP and the mixture are fitted on at most this many particles (a seeded
        random sample); everyone else is placed into the map from the fitted
        reference. None: all particles. Measured on 100,000 simulated T20S + rubisco
        + junk particles (benchmarks/scale.py): species ARI 0.989 fitted on all, 0.969
        on 50,000 and 0.964 on 20,000 (with ``transform_epochs`` 30); junk F1 0.979
        for all three (the junk call does not use the map); the fit took 187, 130 and
        106 s.
    reference_size : int or None
        Fitted points kept as the map's reference for placing the others (and in the
        saved model, ``model/``); None: all fitted points.
    transform_epochs : int
        Layout epochs against the frozen reference after the weighted-mean placement of
        the particles outside the fit sample (umap-learn's transform uses 30 for large
        sets). Measured on 100,000 simulated T20S + rubisco + junk particles fitted on
        a 50,000 sample: species ARI of the placed particles 0.922 without, 0.962 with
        30 epochs (0.976 for the fitted sample), for 35% more placement time.
    max_members : int
        At most this many members per class (the most probable) are aligned and
        averaged.
    examples_per_class : int
        Member images per class kept in ``class_examples.mrcs`` for the atlas.
    particle_diameter_angstrom : float or None
        Expected particle diameter; sets the junk score's central region. Default:
        0.6 of the box.
    refine : bool
        Run the second, phase-keeping stage (:mod:`cryomanifold.stages.refine`):
        multi-reference alignment from the map's class averages, in the map's good
        region, into fine classes with sharp averages. Off (default): the map's
        classes are the run's classes.
    refine_options : dict
        Keyword arguments of :class:`cryomanifold.refine.RefineSettings` (for
        example ``target_size``, ``max_classes``, ``n_iter``).
    atlas : bool
        Also write the interactive ``atlas.html``.
    progress : bool
        Show progress bars.
    """

    box: int = 64
    n_classes: int | None = None
    seed: int = 0
    batch_size: int = 1024
    phase_flip: bool = True
    ctf_features: bool = True
    contrast_weight: float = 5.0
    standardize: bool = False
    feature_options: dict[str, Any] = field(default_factory=dict)
    pca_variance: float = 0.95
    n_neighbors: int = 15
    min_dist: float = 0.1
    fit_sample: int | None = 50_000
    reference_size: int | None = 20_000
    transform_epochs: int = 30
    max_members: int = 300
    examples_per_class: int = 8
    particle_diameter_angstrom: float | None = None
    refine: bool = False
    refine_options: dict[str, Any] = field(default_factory=dict)
    atlas: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.box < 16 or self.box % 2:
            raise ValueError(f"box must be an even number of pixels >= 16; got {self.box}")
        if self.n_classes is not None and self.n_classes < 1:
            raise ValueError(f"the number of classes must be >= 1; got {self.n_classes}")
        if not 0 < self.pca_variance <= 1:
            raise ValueError(f"pca_variance must be in (0, 1]; got {self.pca_variance}")
        if self.batch_size < 1 or self.max_members < 1 or self.examples_per_class < 0:
            raise ValueError("batch_size and max_members must be >= 1, examples_per_class >= 0")
        if self.transform_epochs < 0:
            raise ValueError(f"transform_epochs must be >= 0; got {self.transform_epochs}")
        for name in ("fit_sample", "reference_size"):
            value = getattr(self, name)
            if value is not None and value < 100:
                raise ValueError(f"{name} must be at least 100 (or None for all); got {value}")
        if self.refine_options:
            from cryomanifold.refine import RefineSettings

            known = {f.name for f in dataclasses.fields(RefineSettings)}
            known -= {"pixel_size_angstrom", "seed"}
            unknown = sorted(set(self.refine_options) - known)
            if unknown:
                raise ValueError(
                    f"unknown refine option(s) {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(known))}"
                )
            RefineSettings(pixel_size_angstrom=1.0, **self.refine_options)  # checks values

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return dataclasses.asdict(self)

    def result_fingerprint(self) -> str:
        """Hash of the fields that change results (for ``--resume`` checks)."""
        data = {k: v for k, v in self.as_dict().items() if k not in EXECUTION_FIELDS}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]
