"""Image paths that resolve where RELION looks for them.

RELION reads every relative path in a STAR file (``k@stack.mrcs``, a model's
``_rlnReferenceImage``, an optimiser's ``_rlnModelStarFile``) relative to the
folder it runs in, which is the *project folder* (the one holding
``default_pipeline.star``). A STAR file inside a RELION project therefore gets
paths relative to that project folder; a file outside any project gets paths
relative to its own folder. Either way the path resolves from the file's folder
or one of its parents, which is also where cryomanifold's readers look. A target
on another branch of the file tree than the base (no common folder below the
root) is written as an absolute path.

RELION (3.1 to 5) refuses ``k@stack.mrc``: "stacks of images in MRC-format should
have extension .mrcs; .mrc extensions are reserved for 3D maps". cryoSPARC
writes its particle stacks as ``.mrc``, so :func:`rebase_image_names` can point
such names at ``.mrcs`` symbolic links instead (no data is copied).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "PIPELINE_FILE",
    "RebasedNames",
    "find_project_dir",
    "link_as_mrcs",
    "path_for",
    "rebase_image_names",
    "relion_base_dir",
    "run_search_dirs",
]

logger = logging.getLogger(__name__)

#: The file that marks a RELION project folder.
PIPELINE_FILE = "default_pipeline.star"


def find_project_dir(folder: str | os.PathLike[str]) -> Path | None:
    """The nearest RELION project folder at or above ``folder``, or None.

    Parameters
    ----------
    folder : path
        Need not exist yet (its nearest existing ancestor is searched).
    """
    start = Path(folder).resolve()
    for candidate in (start, *start.parents):
        if (candidate / PIPELINE_FILE).is_file():
            return candidate
    return None


def relion_base_dir(
    folder: str | os.PathLike[str], project_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The folder that relative paths in a STAR file written into ``folder`` start from.

    ``project_dir`` when given, else the RELION project around ``folder``, else
    ``folder`` itself (all resolved to absolute paths).
    """
    if project_dir is not None:
        return Path(project_dir).resolve()
    return find_project_dir(folder) or Path(folder).resolve()


def path_for(target: str | os.PathLike[str], base: str | os.PathLike[str]) -> str:
    """``target`` as written in a file whose paths start from ``base``.

    Relative (``../`` allowed) when the two share a folder below the file-system
    root, absolute otherwise. Both are made absolute first; symbolic links are not
    followed, so a link is written as the link.
    """
    t = Path(os.path.abspath(target))
    b = Path(os.path.abspath(base))
    try:
        common = Path(os.path.commonpath([t, b]))
    except ValueError:  # different drives (Windows)
        return str(t)
    if common == Path(common.anchor):
        return str(t)
    return os.path.relpath(t, b)


def run_search_dirs(run_dir: Path, input_path: str | os.PathLike[str] | None) -> list[Path]:
    """Folders to look in for the stacks named in a run folder's ``particles.star``.

    The run folder (names written relative to it for .cs/.mrcs inputs), then the
    input's folder and its parents (a .star input's names are kept as they were,
    relative to its RELION project), then the run folder's parents.
    """
    run = run_dir.resolve()
    dirs = [run]
    if input_path:
        src = Path(input_path).resolve().parent
        dirs += [src, *src.parents]
    dirs += list(run.parents)
    return list(dict.fromkeys(dirs))  # first occurrence of each, in order


def _resolve(name: str, dirs: Sequence[Path]) -> Path | None:
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for d in dirs:
        if (d / p).is_file():
            return d / p
    return None


def link_as_mrcs(target: Path, links_dir: Path, taken: dict[Path, Path]) -> Path:
    """A ``.mrcs`` symbolic link in ``links_dir`` to the MRC stack ``target``.

    Parameters
    ----------
    target : Path
        An existing ``.mrc`` file.
    links_dir : Path
        Created when needed.
    taken : dict of link path to target
        Links made so far in this call, so that two stacks with the same name in
        different folders get different links (``name_2.mrcs``, ...); updated.

    Returns
    -------
    Path
        The link. An existing link that already points at ``target`` is reused.

    Raises
    ------
    OSError
        If the file system allows neither symbolic nor hard links.
    """
    links_dir.mkdir(parents=True, exist_ok=True)
    real = target.resolve()
    for i in range(1, 10_000):
        link = links_dir / (f"{target.stem}.mrcs" if i == 1 else f"{target.stem}_{i}.mrcs")
        if taken.get(link) == real:
            return link
        if link in taken:
            continue
        if link.is_symlink() or link.exists():
            if link.resolve() == real:
                taken[link] = real
                return link
            continue
        pointer = path_for(real, links_dir)
        tmp = links_dir / f".{link.name}.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(pointer, tmp)
        except OSError:
            os.link(real, tmp)  # no symbolic links here: a hard link copies no data either
        os.replace(tmp, link)
        taken[link] = real
        return link
    raise OSError(f"{links_dir}: too many stacks named {target.stem}.mrcs")  # pragma: no cover


@dataclass(frozen=True)
class RebasedNames:
    """What :func:`rebase_image_names` did.

    Attributes
    ----------
    names : ndarray of object (str), shape (n,)
        The new ``k@path`` names.
    changed : bool
        Whether any name differs from the input.
    missing : list of str
        Stack names that were found nowhere (left as they were).
    links : list of Path
        ``.mrcs`` links that point at ``.mrc`` stacks.
    """

    names: npt.NDArray[np.object_]
    changed: bool
    missing: list[str]
    links: list[Path]


def rebase_image_names(
    names: Iterable[str],
    *,
    search_dirs: Sequence[Path],
    base: Path,
    links_dir: Path | None = None,
) -> RebasedNames:
    """Rewrite ``k@stack`` image names so that each stack resolves from ``base``.

    Parameters
    ----------
    names : iterable of str, length n
        ``rlnImageName`` values (``k@path``, or a bare path for single images).
    search_dirs : sequence of Path
        Where the current relative paths are looked for, in order.
    base : Path
        The folder the new relative paths start from (see :func:`relion_base_dir`).
    links_dir : Path, optional
        Where ``.mrcs`` links to ``.mrc`` stacks are made; None leaves ``.mrc``
        names as they are.

    Returns
    -------
    RebasedNames
    """
    series = pd.Series(list(names), dtype=object).astype(str)
    parts = series.str.rpartition("@")
    has_at = (parts[1] == "@").to_numpy()
    files = np.where(has_at, parts[2].to_numpy(dtype=object), series.to_numpy(dtype=object))
    prefix = np.where(has_at, (parts[0] + "@").to_numpy(dtype=object), "")
    unique, inverse = np.unique(files.astype(str), return_inverse=True)
    stacks = set(files[has_at].astype(str).tolist())  # files read as k@stack
    new_files: list[str] = []
    missing: list[str] = []
    taken: dict[Path, Path] = {}
    for name in unique:
        found = _resolve(name, search_dirs)
        if found is None:
            missing.append(str(name))
            new_files.append(str(name))
            continue
        if links_dir is not None and found.suffix.lower() == ".mrc" and name in stacks:
            found = link_as_mrcs(found, links_dir, taken)
        new_files.append(path_for(found, base))
    if missing:
        logger.warning(
            "%d stack file(s) not found (e.g. %s); their names are kept as they were",
            len(missing),
            missing[0],
        )
    mapped = np.asarray(new_files, dtype=object)[np.asarray(inverse).reshape(-1)]
    out = (prefix + mapped).astype(object)
    changed = bool(np.any(out != series.to_numpy(dtype=object)))
    return RebasedNames(names=out, changed=changed, missing=missing, links=sorted(taken))
