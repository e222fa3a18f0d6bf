"""Checks of arguments that many functions share, each written once (boxes and image sizes: ``boxes``)."""

from __future__ import annotations

import numbers


def is_positive_int(value: object) -> bool:
    """True for a whole number of at least 1 (numpy ints too); ``bool`` is not a number here."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_positive_int(name: str, value: object, *, none_ok: bool = False, unit: str = "") -> int | None:
    """Return ``value`` as an int when it is a positive int (or ``None`` when ``none_ok``).

    Raises:
        ValueError: anything else, e.g. ``num_bins must be a positive int (bins per side), got 0``.
    """
    if value is None and none_ok:
        return None
    if not is_positive_int(value):
        unit = f" ({unit})" if unit else ""
        raise ValueError(f"{name} must be a positive int{unit}{' or None' if none_ok else ''}, got {value!r}")
    return int(value)  # type: ignore[arg-type]
