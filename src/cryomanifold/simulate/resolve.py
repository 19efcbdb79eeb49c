"""Model specifications: a file path, ``builtin:NAME`` or an :class:`AtomicModel`.

This module sits above :mod:`~cryomanifold.simulate.models` (files) and
:mod:`~cryomanifold.simulate.builtin` (synthetic assemblies), so that neither of
them imports the other's users.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryomanifold.simulate.builtin import BUILTIN_MODELS, builtin_model
from cryomanifold.simulate.models import AtomicModel, load_model

__all__ = ["BUILTIN_PREFIX", "check_model_spec", "resolve_model"]

#: prefix of model specifications naming a built-in synthetic assembly
BUILTIN_PREFIX = "builtin:"


def resolve_model(spec: str | os.PathLike[str] | AtomicModel) -> AtomicModel:
    """Turn a model specification into an :class:`AtomicModel`.

    Parameters
    ----------
    spec : str, path-like or AtomicModel
        An AtomicModel (returned as is), ``"builtin:NAME"`` (one of
        :data:`cryomanifold.simulate.builtin.BUILTIN_MODELS`) or a file path.
    """
    if isinstance(spec, AtomicModel):
        return spec
    text = os.fspath(spec)
    if text.startswith(BUILTIN_PREFIX):
        return builtin_model(text[len(BUILTIN_PREFIX) :])
    return load_model(text)


def check_model_spec(spec: str | os.PathLike[str] | AtomicModel) -> None:
    """Cheap check of a model specification, without reading the model.

    Raises
    ------
    ValueError
        If a ``builtin:`` name is unknown (the message lists the known ones).
    FileNotFoundError
        If a model file does not exist.
    """
    if isinstance(spec, AtomicModel):
        return
    text = os.fspath(spec)
    if text.startswith(BUILTIN_PREFIX):
        if text[len(BUILTIN_PREFIX) :] not in BUILTIN_MODELS:
            builtin_model(text)  # raises with the list of known names
        return
    if not Path(text).is_file():
        raise FileNotFoundError(
            f"{text}: no such model file; give a .pdb or .cif (optionally .gz) or builtin:NAME"
        )
