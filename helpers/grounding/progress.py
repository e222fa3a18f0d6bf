"""When to show progress bars: only when someone is watching."""

from __future__ import annotations

import os
import sys


def interactive() -> bool:
    """True in an interactive session; False in headless runs, so stored notebook outputs stay clean.

    ``KOSMOS2_PROGRESS=0`` (set by the project's test and run commands; also ``false``, ``no``, ``off``, in any
    case) or ``CI`` turns bars off, ``KOSMOS2_PROGRESS=1`` (``true``, ``yes``, ``on``) forces them on. Otherwise:
    on in Jupyter kernels and terminals.
    """
    flag = os.environ.get("KOSMOS2_PROGRESS", "").strip().lower()
    if flag in {"0", "false", "no", "off"}:
        return False
    if flag in {"1", "true", "yes", "on"}:
        return True
    if os.environ.get("CI"):
        return False
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())
