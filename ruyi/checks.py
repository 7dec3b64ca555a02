"""Number checks shared by every entry point: one place decides what an integer or a number is.

Values come from Hydra (Python ints/floats), from Python callers (numpy scalars are common:
``np.int64`` from an array, ``np.float32`` from a slider) and from ComfyUI. Booleans are refused
(``True`` is an ``int`` to Python but never a step count), non-finite numbers are refused (``inf``
or ``nan`` slip through ``>=`` comparisons and give a video of noise with exit 0), and every value
comes back as a plain Python ``int``/``float`` so nothing downstream sees numpy types.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ruyi.errors import ConfigError


def plain(value: Any) -> Any:
    """A numpy scalar as the Python int/float/bool it holds; anything else unchanged (and checked
    by whoever takes it)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", None) == 0 else value


def _shown(value: Any) -> str:
    """``repr`` of the value as the user typed it (``3``, not ``np.int64(3)``)."""
    return repr(plain(value))


def _bounds(low: float | None, high: float | None) -> str:
    def show(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    if low is not None and high is not None:
        return f"in [{show(low)}, {show(high)}]"
    return f">= {show(low)}" if low is not None else f"<= {show(high)}"


def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    hint: str = "",
    error: type[Exception] = ConfigError,
) -> int:
    """``value`` as a Python int within ``[low, high]`` (either bound optional), else ``error``."""
    given = value
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        value = int(value)
        ok = (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        where = f" {_bounds(low, high)}" if low is not None or high is not None else ""
        raise error(f"{name}={_shown(given)} must be an integer{where}{f' ({hint})' if hint else ''}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    hint: str = "",
    error: type[Exception] = ConfigError,
) -> float:
    """``value`` as a finite Python float within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    given = value
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value <= high
    if not ok:
        if low_open and low is not None:
            where = f"> {low:g}" + (f" and <= {high:g}" if high is not None else "")
        else:
            where = _bounds(low, high) if low is not None or high is not None else ""
        # "finite" only where it is the problem, so the usual message reads "cfg=-1 must be a number >= 0"
        finite = isinstance(given, numbers.Real) and not isinstance(given, bool) and not math.isfinite(float(given))
        kind = "must be a finite number" if finite else "must be a number"
        words = " ".join(w for w in (kind, where, f"({hint})" if hint else "") if w)
        raise error(f"{name}={_shown(given)} {words}")
    return value
