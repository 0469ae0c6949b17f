"""How numbers read in the report, the summary and the terminal: percentages, eps as 8/255, escaping."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from typing import Any

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~$])")  # what changes meaning inside a line (names never start one)


def format_eps(eps: Any) -> str:
    """0.3 -> "0.3", 0.0313725 -> "8/255": the way people write them (decimal when it is exact)."""
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        return str(eps)
    if math.isnan(eps):
        return "-"
    if abs(round(eps, 3) - eps) < 1e-9:
        return f"{eps:g}"
    if abs(eps * 255 - round(eps * 255)) < 1e-6:
        return f"{round(eps * 255)}/255"
    return f"{eps:.4g}"


def pct(value: Any, ci: bool = False, digits: int = 1) -> str:
    """0.953 -> "95.3%"; a results row with ci=True -> "95.3% [93.1, 96.9]"."""
    if isinstance(value, Mapping) or _is_series(value):
        text = pct(value["accuracy"], digits=digits)
        return f"{text} [{value['ci_low'] * 100:.{digits}f}, {value['ci_high'] * 100:.{digits}f}]" if ci else text
    value = float(value)
    return "-" if math.isnan(value) else f"{value * 100:.{digits}f}%"


def describe_point(row: Mapping[str, Any]) -> str:
    """Where a result row sits: "pgd at eps 8/255", "patch at scale 0.1", "worst-case at eps 0.3"."""
    if row.get("is_patch", False):
        return f"{row['attack']} at scale {format_eps(row['scale'])}"
    return f"{row['attack']} at eps {format_eps(row['eps'])}"


def markdown_escape(text: Any) -> str:
    """User text as literal Markdown: punctuation backslash-escaped, one line (so `|` can't split a table)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _is_series(value: Any) -> bool:
    """A pandas row, without importing pandas (the sweep command's summary runs without it)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.Series)
