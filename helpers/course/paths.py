"""Where the course's files live: the repository root, its ``data/`` and ``notebooks/`` folders.

The course is meant to be used from a clone (``pip install -e .``), so every path is found relative to
this package's folder, which sits at the repository root. The data folder can be moved elsewhere with the
``KOSMOS2_COURSE_DATA`` environment variable (for example to keep large downloads off a small disk).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that, when set to a non-empty value, replaces the repository's ``data/`` folder.
DATA_ENV_VAR = "KOSMOS2_COURSE_DATA"

#: Name of the small model trained by this project on its synthetic world, shipped inside ``data/``.
BUNDLED_MODEL_NAME = "kosmos2-tiny-world"


def repo_root() -> Path:
    """Return the absolute path of the repository root (the folder holding ``helpers/``)."""
    return Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Return the course's data folder.

    By default this is ``<repo root>/data``. When the environment variable ``KOSMOS2_COURSE_DATA`` is set
    to a non-empty value, that path is used instead (``~`` is expanded, relative paths are taken from the
    current working directory). An empty value counts as unset. The folder is not required to exist yet,
    but a path that exists and is not a folder is an error.

    Raises:
        NotADirectoryError: the chosen path exists but is a file (or something else that is not a folder).
    """
    override = os.environ.get(DATA_ENV_VAR, "").strip()
    if override:
        path = Path(override).expanduser().resolve()
        source = f"${DATA_ENV_VAR}"
    else:
        path = repo_root() / "data"
        source = "the repository's data folder"
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"expected {source} to be a folder, but {path} exists and is not a folder")
    return path


def notebooks_dir() -> Path:
    """Return the folder holding the course notebooks (``<repo root>/notebooks``)."""
    return repo_root() / "notebooks"


def shipped_data(name: str) -> Path:
    """Return ``data_dir() / name``, or the copy the repository ships in its own ``data/``.

    The shipped copy is taken only when the data folder was moved (``KOSMOS2_COURSE_DATA``) and holds nothing
    of that name, so a moved data folder needs no copy of the bundled model or the article's outputs, and a
    copy placed there wins. When neither exists, the path in the data folder is returned (its error names it).
    """
    path = data_dir() / name
    shipped = repo_root() / "data" / name
    return shipped if not path.exists() and shipped.exists() else path


def bundled_model_dir() -> Path:
    """Return the folder of the bundled offline model, ``kosmos2-tiny-world`` (see :func:`shipped_data`)."""
    return shipped_data(BUNDLED_MODEL_NAME)
