"""Imaging parameters of a simulation, and the two presets.

``paper`` is the imaging of the paper's T20S simulation (the defaults of
:class:`SimulationConfig`); ``realistic`` adds the physics that makes real data
harder (:data:`PRESETS` lists its settings; docs/simulate.md gives the sources):

========================== ======================== ==================================
option                     paper                    realistic
========================== ======================== ==================================
protein_contrast           None (0.42 of vacuum)    0.30 of vacuum
shifts                     Gaussian, sigma 3 Å      uniform, up to ±8 Å per axis
envelope B-factor          50 Å^2, recorded         50-150 Å^2 per particle, unrecorded
ice thickness              none                     250-600 Å per micrograph
ice slope                  0                        up to 0.1 Å per Å across the box
neighbours                 0                        0.5 per box (Poisson)
detector                   none (ideal counting)    none (``k3``/``falcon4`` optional)
========================== ======================== ==================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cryomanifold.simulate.detector import DETECTORS

__all__ = ["PRESETS", "SHIFT_DISTRIBUTIONS", "SimulationConfig"]

#: ways to draw the in-plane particle shifts
SHIFT_DISTRIBUTIONS = ("gaussian", "uniform")

#: settings of each preset that differ from the :class:`SimulationConfig` defaults
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "realistic": {
        "protein_contrast": 0.30,
        "shift_distribution": "uniform",
        "shift_max_angstrom": 8.0,
        "envelope_bfactor_angstrom2": (50.0, 150.0),
        "record_bfactor": False,
        "ice_thickness_angstrom": (250.0, 600.0),
        "ice_slope_max": 0.1,
        "neighbors_per_particle": 0.5,
    },
}


def _range_ok(value: Any, low: float = 0.0) -> bool:
    """A (min, max) pair with low <= min <= max."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return False
    return low <= lo <= hi


@dataclass(frozen=True)
class SimulationConfig:
    """Imaging parameters of a simulation (defaults: the ``paper`` preset).

    Build a preset with :meth:`preset` (``SimulationConfig.preset("realistic")``).

    Attributes
    ----------
    box_size : int
        Box side in pixels (even). Default 256.
    pixel_size_angstrom : float
        Default 1.0 Å.
    dose_e_per_angstrom2 : float
        Electron dose, e/Å^2: the Poisson mean of the counts is dose x pixel area on
        empty ice. Default 20.
    voltage_kv, cs_mm, amplitude_contrast : float
        Microscope: acceleration voltage (300 kV), spherical aberration (2.7 mm),
        fraction of amplitude contrast (0.1).
    defocus_range_angstrom : (float, float)
        Mean defocus of each micrograph is uniform in this range, Å (underfocus > 0).
        Default 10,000-25,000 Å.
    astigmatism_max_angstrom : float
        DefocusU - DefocusV is uniform in [0, this], Å. Default 500.
    envelope_bfactor_angstrom2 : float or (float, float)
        CTF envelope ``exp(-B k^2 / 4)`` (RELION's convention), Å^2: one value, or a
        range from which each particle draws its own (the particle-level B-factor of
        real data, 50-150 Å^2: beam-induced motion, radiation damage, partial
        coherence). Default 50; realistic (50, 150).
    record_bfactor : bool
        Write the envelope as ``rlnCtfBfactor``. Real metadata do not carry the
        particle's B-factor, so the realistic preset leaves the column out. Default True.
    shift_distribution : {"gaussian", "uniform"}
        In-plane particle shifts (picking errors): Gaussian with
        ``shift_sigma_angstrom`` per axis (redrawn beyond ``shift_max_angstrom``), or
        uniform in ``[-shift_max_angstrom, shift_max_angstrom]`` per axis. Default
        Gaussian; realistic uniform.
    shift_sigma_angstrom : float
        Standard deviation of Gaussian shifts (each axis), Å. Default 3.
    shift_max_angstrom : float or None
        Largest shift on each axis, Å (None: unbounded Gaussian). Default None;
        realistic 8.
    particles_per_micrograph : int
        Rows sharing a fake micrograph, its CTF and its ice thickness. Default 100.
    ice_texture_std_angstrom : (float, float)
        Range of the faint ice-thickness texture of every image (correlation length
        20-60 Å), Å. Default (1, 4).
    ice_thickness_angstrom : (float, float) or None
        Range of the mean ice thickness of each micrograph, Å. The zero-loss
        (energy-filtered) beam is attenuated by ``exp(-t / inelastic_mean_free_path)``,
        so thicker ice means fewer electrons and more shot noise. None: no
        attenuation. Default None; realistic (250, 600).
    ice_slope_max : float
        Largest thickness gradient across the box, Å of thickness per Å (uniform in
        [0, this], random direction): the ice is thinner towards the hole centre. It
        shows as a ramp of the zero-loss intensity. Default 0; realistic 0.1.
    inelastic_mean_free_path_angstrom : float
        Inelastic mean free path of vitreous ice at 300 kV, Å (scaled with
        ``beta^2`` at other voltages). Default 3500 (about 350 nm).
    neighbors_per_particle : float
        Mean number (Poisson) of other particles of the dataset partly inside each
        box, offset so that their centre lies near or beyond the box edge, not over
        the boxed particle (:mod:`cryomanifold.simulate.neighbors`). Default 0;
        realistic 0.5.
    detector : {None, "k3", "falcon4"}
        Detector MTF and noise transfer (:mod:`cryomanifold.simulate.detector`);
        None is an ideal counting detector (white noise, no blur). Default None.
    implicit_hydrogens, solvent : bool
        Projection options (:func:`cryomanifold.simulate.project.scattering_channels`).
        Default True, True.
    protein_contrast : float or None
        Low-resolution contrast of protein against the vitreous ice around it, as a
        fraction of its contrast in vacuum, ``(V_protein - V_ice) / V_protein``; the
        displaced ice's potential is scaled to give it for protein of average
        composition (:func:`cryomanifold.simulate.project.solvent_scale_for_contrast`).
        None keeps the neutral-atom potentials (protein 7.9 V, ice 4.57 V: 0.42).
        Default None; realistic 0.30. Needs ``solvent``.
    oversample : int
        Projection grid oversampling (1: none). Default 1.
    """

    box_size: int = 256
    pixel_size_angstrom: float = 1.0
    dose_e_per_angstrom2: float = 20.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    defocus_range_angstrom: tuple[float, float] = (10000.0, 25000.0)
    astigmatism_max_angstrom: float = 500.0
    envelope_bfactor_angstrom2: float | tuple[float, float] = 50.0
    record_bfactor: bool = True
    shift_distribution: str = "gaussian"
    shift_sigma_angstrom: float = 3.0
    shift_max_angstrom: float | None = None
    particles_per_micrograph: int = 100
    ice_texture_std_angstrom: tuple[float, float] = (1.0, 4.0)
    ice_thickness_angstrom: tuple[float, float] | None = None
    ice_slope_max: float = 0.0
    inelastic_mean_free_path_angstrom: float = 3500.0
    neighbors_per_particle: float = 0.0
    detector: str | None = None
    implicit_hydrogens: bool = True
    solvent: bool = True
    protein_contrast: float | None = None
    oversample: int = 1

    def __post_init__(self) -> None:
        for name in _PAIRS:  # lists (from JSON or argparse) become tuples of floats
            value = getattr(self, name)
            if isinstance(value, list | tuple) and len(value) == 2:
                object.__setattr__(self, name, (float(value[0]), float(value[1])))
        bfac = self.envelope_bfactor_angstrom2
        checks = {
            "box_size": self.box_size >= 8 and self.box_size % 2 == 0,
            "pixel_size_angstrom": self.pixel_size_angstrom > 0,
            "dose_e_per_angstrom2": self.dose_e_per_angstrom2 > 0,
            "voltage_kv": self.voltage_kv > 0,
            "cs_mm": self.cs_mm >= 0,
            "amplitude_contrast": 0 <= self.amplitude_contrast < 1,
            "defocus_range_angstrom": _range_ok(self.defocus_range_angstrom)
            and self.defocus_range_angstrom[0] > 0,
            "astigmatism_max_angstrom": self.astigmatism_max_angstrom >= 0,
            "envelope_bfactor_angstrom2": _range_ok(bfac)
            if isinstance(bfac, tuple | list)
            else float(bfac) >= 0,
            "shift_distribution": self.shift_distribution in SHIFT_DISTRIBUTIONS,
            "shift_sigma_angstrom": self.shift_sigma_angstrom >= 0,
            "shift_max_angstrom": self.shift_max_angstrom is None or self.shift_max_angstrom >= 0,
            "particles_per_micrograph": self.particles_per_micrograph >= 1,
            "ice_texture_std_angstrom": _range_ok(self.ice_texture_std_angstrom),
            "ice_thickness_angstrom": self.ice_thickness_angstrom is None
            or _range_ok(self.ice_thickness_angstrom),
            "ice_slope_max": 0 <= self.ice_slope_max <= 1,
            "inelastic_mean_free_path_angstrom": self.inelastic_mean_free_path_angstrom > 0,
            "neighbors_per_particle": 0 <= self.neighbors_per_particle <= 10,
            "detector": self.detector is None or self.detector in DETECTORS,
            "protein_contrast": self.protein_contrast is None
            or (0 < self.protein_contrast < 1 and self.solvent),
            "oversample": self.oversample >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"invalid simulation setting {name}={getattr(self, name)!r}"
                    + _HINTS.get(name, "")
                )
        if self.shift_distribution == "uniform" and self.shift_max_angstrom is None:
            raise ValueError("uniform shifts need shift_max_angstrom (the bound on each axis)")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SimulationConfig:
        """The configuration of a preset (``"paper"`` or ``"realistic"``), with overrides.

        Raises
        ------
        ValueError
            If the preset is unknown.
        TypeError
            If an override is not a field of :class:`SimulationConfig`.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown simulation option(s): {', '.join(unknown)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def bfactor_range(self) -> tuple[float, float]:
        """The envelope B-factor as a (min, max) range, Å^2."""
        b = self.envelope_bfactor_angstrom2
        if isinstance(b, tuple | list):
            return float(b[0]), float(b[1])
        return float(b), float(b)


_PAIRS = (
    "defocus_range_angstrom",
    "envelope_bfactor_angstrom2",
    "ice_texture_std_angstrom",
    "ice_thickness_angstrom",
)

_HINTS = {
    "shift_distribution": f"; choose one of {', '.join(SHIFT_DISTRIBUTIONS)}",
    "detector": "; choose None, 'k3' or 'falcon4'",
    "protein_contrast": " (a fraction in (0, 1), with solvent=True)",
    "ice_slope_max": " (Å of thickness per Å, in [0, 1])",
}
