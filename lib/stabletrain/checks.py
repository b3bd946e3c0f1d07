"""Argument checks, one line per parameter at the call site: each returns the value (as
``int``, ``float``, ``bool`` or a tuple) or raises ``TypeError`` (wrong type) or ``ValueError`` (out
of range, not a choice), naming the parameter and the accepted values. A ``bool`` is never a
number, a string never a number or a bool; a 0-d tensor or array of a number counts as that number
(``check_int``: of an integer dtype); ``optional=True`` lets ``None`` through."""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import os
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch


def _bounds(min: float | None, max: float | None, low_open: bool, high_open: bool) -> str:
    """``>= 0``, ``< 1`` or ``in (0, 1]`` (ints in full)."""
    lo, hi = (f"{b:g}" if isinstance(b, float) else str(b) for b in (min, max))
    if min is not None and max is not None:
        return f"in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
    if min is not None:
        return f"{'>' if low_open else '>='} {lo}"
    return f"{'<' if high_open else '<='} {hi}"


def _type_error(name: str, expected: str, value: Any) -> TypeError:
    return TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")


def _number(name, value, kind, expected, min, max, low_open, high_open, finite, optional):
    if value is None and optional:
        return None
    given = value
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()  # a 0-d tensor or array
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _type_error(name, expected + (" or None" if optional else ""), given)
    value = int(value) if kind is numbers.Integral else float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    above = min is None or (value > min if low_open else value >= min)  # False for NaN
    below = max is None or (value < max if high_open else value <= max)
    if not (above and below):
        raise ValueError(f"{name} must be {_bounds(min, max, low_open, high_open)}, got {value}")
    return value


def check_int(
    name: str, value: Any, *, min: int | None = None, max: int | None = None, optional=False
) -> int | None:
    """``value`` as an ``int`` in ``[min, max]`` (either bound may be ``None``)."""
    return _number(name, value, numbers.Integral, "an int", min, max, False, False, True, optional)


def check_float(
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    optional: bool = False,
) -> float | None:
    """``value`` (an int or a float) as a ``float`` in ``[min, max]``, open at ``low_open``/
    ``high_open``; ``finite=False`` also accepts ``±inf`` and NaN (which fails any bound)."""
    args = (min, max, low_open, high_open, finite, optional)
    return _number(name, value, numbers.Real, "a number", *args)


def check_bool(name: str, value: Any, *, optional: bool = False) -> bool | None:
    """``value`` if it is ``True`` or ``False`` (not ``0``/``1``, not ``"false"``)."""
    if isinstance(value, bool) or (value is None and optional):
        return value
    raise _type_error(name, "a bool (True or False)" + (" or None" if optional else ""), value)


def check_choice(name: str, value: Any, choices: Collection) -> Any:
    """``value`` if it equals one of ``choices`` (``True`` does not count as ``1``)."""
    if any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices):
        return value
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_keys(name: str, mapping: Any, allowed: Collection[str]) -> Mapping:
    """``mapping`` if it is a mapping whose keys are all in ``allowed``."""
    if not isinstance(mapping, Mapping):
        raise _type_error(name, "a mapping", mapping)
    if unknown := sorted(map(str, set(mapping) - set(allowed))):
        raise ValueError(f"unknown key(s) {unknown} in {name}; accepted keys are {tuple(allowed)}")
    return mapping


def check_range(
    name: str, value: Any, *, min: float | None = None, max: float | None = None, integer=False
) -> tuple[float, float] | tuple[int, int]:
    """A pair ``(low, high)`` with ``min <= low <= high <= max``, as a tuple."""
    kind = "integers" if integer else "numbers"
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Collection):
        raise _type_error(name, f"a pair of {kind} (low, high)", value)
    if len(value) != 2:
        raise ValueError(f"{name} must be a pair of {kind} (low, high), got {value!r}")
    check = check_int if integer else check_float
    low, high = (check(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not ((min is None or min <= low) and low <= high and (max is None or high <= max)):
        rule = ("low" if min is None else f"{min:g} <= low") + " <= high"
        rule += "" if max is None else f" <= {max:g}"
        raise ValueError(f"{name} must satisfy {rule}, got {value!r}")
    return low, high


def check_tensor(name: str, value: Any) -> torch.Tensor:
    """``value`` if it is a ``torch.Tensor``."""
    if isinstance(value, torch.Tensor):
        return value
    hint = " (convert it with torch.as_tensor)" if hasattr(value, "__array__") else ""
    raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}{hint}")


def check_unit_interval(what: str, values: torch.Tensor, hint: str = "") -> None:
    """``ValueError`` unless all ``values`` lie in [0, 1]."""
    values = values.detach()
    low, high = (float(values.amin()), float(values.amax())) if values.numel() else (0.0, 0.0)
    if not (0.0 <= low and high <= 1.0):
        raise ValueError(f"{what} must be in [0, 1], got values in [{low:g}, {high:g}]{hint}")


def warn_if_probabilities(values: torch.Tensor, message: str) -> bool:
    """Warn ``message`` if floating ``values`` (16 or more) all lie in [0, 1] and span half of it
    (probabilities for logits). True once settled: warned, or a value outside [0, 1] (logits)."""
    if not values.is_floating_point() or values.numel() < 16:
        return False
    low, high = (float(v) for v in values.detach().aminmax())
    if inside := 0 <= low and high <= 1 and high - low >= 0.5:
        warnings.warn(message, stacklevel=3)
    return inside or not (0 <= low and high <= 1)


def check_folder(name: str, value: Any, *, writable: bool = False) -> Path:
    """``value`` (a non-empty ``str`` or ``os.PathLike``) as a ``Path`` that is not a file; with
    ``writable=True`` the folder, or the nearest existing folder above it, must be writable."""
    if not isinstance(value, str | os.PathLike):
        raise _type_error(name, "a folder path (str or os.PathLike)", value)
    if not os.fspath(value):
        raise ValueError(f"{name} must name a folder, got '' (give '.' for the current folder)")
    path = Path(value)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{name} must be a folder, but {existing} is a file")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (in {existing}, which is not)"
        raise ValueError(f"{name} {path} is not writable{where}: give a folder you can write to")
    return path


def did_you_mean(word: Any, choices: Collection) -> str:
    """``"did you mean 'x'?"`` for the choice nearest to ``word`` (``""`` if none is near)."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices if c is not None], n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def check_callable(name: str, value: Any, *, optional: bool = True) -> Any:
    """``value`` if it is callable (or ``None`` with ``optional``), else ``TypeError``."""
    if callable(value) or (value is None and optional):
        return value
    raise TypeError(f"{name} must be callable{' or None' if optional else ''}, got {value!r}")


def check_keywords(where: str, kwargs: Mapping, fn: Callable, taken: Collection[str] = ()) -> None:
    """``TypeError`` for a keyword that ``fn`` does not take (or ``where`` sets, ``taken``)."""
    params = inspect.signature(fn).parameters.items()
    accepted = [n for n, p in params if p.kind is p.KEYWORD_ONLY and n not in taken]
    if unknown := [k for k in kwargs if k not in accepted]:
        hint = f"{did_you_mean(unknown[0], accepted)} ".lstrip()
        raise TypeError(f"{where}() got unknown keyword(s) {unknown}; {hint}accepted: {accepted}")


def check_config_value(check: Callable[..., Any], name: str, value: Any, **bounds: Any) -> Any:
    """``check(name, value, **bounds)``, a wrong type raising ``ValueError`` too (config rule)."""
    try:
        return check(name, value, **bounds)
    except TypeError as error:
        raise ValueError(str(error)) from None
