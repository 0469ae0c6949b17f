"""What the report reads from a sweep's manifest beside its rows: model entries and reference eps. No pandas, so the
sweep command's terminal summary (`report.summary_of_rows`) starts fast."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from robustcnn.errors import UsageError
from robustcnn.results import Manifest, ModelEntry
from robustcnn.threat import parse_eps

NORMS = {"inf": "inf", "linf": "inf", "l_inf": "inf", "2": "2", "2.0": "2", "l2": "2"}  # how results may spell them


def model_entries(manifest: Manifest | None, model_ids: Iterable[str]) -> dict[str, ModelEntry]:
    """Manifest entries by model id, for every model of the results in their order (one with every default where
    the manifest has none)."""
    by_id = {entry.id: entry for entry in manifest.models} if manifest is not None else {}
    return {model: by_id.get(model) or ModelEntry(id=model) for model in dict.fromkeys(model_ids)}


def reference_eps(manifest: Manifest | None, entry: ModelEntry, norm: str) -> float | None:
    """The eps the headline reports for `norm`: what the sweep decided (`HeadlineEps` in the model's entry).

    Sweeps made before it decided: the suite's `reference_eps` (one number or a table by norm), else the
    model's threat model eps for its own norm; None when neither applies (the headline then says so).
    """
    if entry.headline is not None:
        return entry.headline.reference_eps.get(norm)
    given = manifest.suite.get("reference_eps") if manifest is not None else None
    if isinstance(given, dict):
        given = {NORMS.get(str(k).lower(), str(k)): v for k, v in given.items()}.get(norm)
    value = _eps_or_none(given)
    if value is not None:
        return value
    threat = entry.threat_model
    if threat is not None and norm in ("", NORMS.get(str(threat.get("norm", "")).lower(), "")):
        return _eps_or_none(threat.get("eps"))
    return None


def _eps_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        eps = parse_eps(value)
    except UsageError:
        return None
    return eps if math.isfinite(eps) else None
