"""When to show progress bars: only when someone is watching. Also the one reading of on/off environment
variables (:func:`env_flag`)."""

from __future__ import annotations

import os
import sys

#: The values, in any case and with spaces around, that turn an on/off environment variable on ...
ON_VALUES = frozenset({"1", "true", "yes", "on"})
#: ... and off.
OFF_VALUES = frozenset({"0", "false", "no", "off"})


def env_flag(name: str) -> bool | None:
    """The on/off environment variable ``name``: True for :data:`ON_VALUES` (``1``, ``true``, ``yes``, ``on``),
    False for :data:`OFF_VALUES` (``0``, ``false``, ``no``, ``off``), in any case and with spaces around; None
    when it is unset or holds anything else (each caller says what that means).

    Used for ``KOSMOS2_PROGRESS`` and ``CI`` (:func:`interactive`; for ``CI`` an off value means no CI run, any
    other value that is not blank a CI run), ``HF_HUB_OFFLINE`` (on only for an on value, as huggingface_hub reads
    it) and ``KOSMOS2_ONNX_CACHE`` (an off value means no cache; any other value is a folder:
    :func:`helpers.grounding.onnx_decoder.cache_dir`).
    """
    value = os.environ.get(name, "").strip().lower()
    if value in ON_VALUES:
        return True
    if value in OFF_VALUES:
        return False
    return None


def in_ci() -> bool:
    """True in a CI run: ``CI`` holds anything but blanks or an off value (CI services set ``true``, ``1`` or their
    name; ``CI=false`` is no CI run)."""
    return bool(os.environ.get("CI", "").strip()) and env_flag("CI") is not False


def interactive() -> bool:
    """True in an interactive session; False in headless runs, so stored notebook outputs stay clean.

    ``KOSMOS2_PROGRESS=0`` (set by the project's test and run commands; also ``false``, ``no``, ``off``, in any
    case) or ``CI`` turns bars off, ``KOSMOS2_PROGRESS=1`` (``true``, ``yes``, ``on``) forces them on
    (:func:`env_flag`; any other value counts as unset); a CI run (:func:`in_ci`) turns them off. Otherwise: on in
    Jupyter kernels and terminals.
    """
    flag = env_flag("KOSMOS2_PROGRESS")
    if flag is not None:
        return flag
    if in_ci():
        return False
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())
