"""Turns a loaded sweep into the report's pieces: HTML (Jinja2, autoescaped), Markdown and checks JSON."""

from __future__ import annotations

import json
import shlex
from functools import lru_cache
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from robustcnn.report import images
from robustcnn.report.adaptive import NOT_ADAPTIVE, Evaluation, evaluations
from robustcnn.report.bracket import bracket
from robustcnn.report.checks import DOCS, Check, Status, counts, titles
from robustcnn.report.comparisons import Comparisons
from robustcnn.report.entries import reference_eps
from robustcnn.report.format import format_eps, markdown_escape, pct
from robustcnn.report.load import SweepData
from robustcnn.report.matrix import MARKS, check_matrix
from robustcnn.report.plots import Curve, Panel, figure_svg, model_styles, series_css, series_defs, swatch
from robustcnn.report.tables import Headline, markdown_table
from robustcnn.results import ModelEntry, RowKind, gallery_file, patch_file

CHECKS_FORMAT = "robustcnn-checks/1"
PROVENANCE = ("status", "message", "seed", "n", "mode", "device", "batch_size", "git_sha", "started", "finished",
              "seconds")  # manifest keys shown as they are, when present  # fmt: skip
PATCH_AXIS = "patch side / image side"
TRAINING_PANELS = [
    ("train_loss", None, "training loss", False),
    ("val_acc", "train_acc", "clean accuracy (val; train dashed)", True),
    ("val_fgsm_acc", None, "val FGSM accuracy", True),
    ("val_pgd_acc", None, "val PGD accuracy", True),
]  # (column, secondary column, title, is a fraction)


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("robustcnn.report", "templates"),
        autoescape=True,  # every {{ value }} is escaped; only generated SVG is marked safe
        undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(data: SweepData, table: Headline, checks: list[Check], compared: Comparisons) -> str:
    return environment().get_template("report.html.j2").render(**context(data, table, checks, compared))


def context(data: SweepData, table: Headline, checks: list[Check], compared: Comparisons) -> dict[str, Any]:
    styles = model_styles(data.model_ids)
    return {
        "comparisons": compared,
        "suite": suite_name(data),
        "suite_description": _suite_field(data, "description") or "",
        "cascade": bool(_suite_field(data, "cascade")),
        "datasets": sorted(set(data.results["dataset"]) - {""}),
        "models": [(model, styles[model]) for model in data.model_ids],
        "styles": styles,
        "series_css": series_css(styles),
        "series_defs": series_defs(styles),
        "headline": table,
        "not_adaptive": NOT_ADAPTIVE,
        "adaptive": adaptive_section(data),
        "matrix": check_matrix(checks, data.model_ids),
        "marks": {status.value: mark for status, mark in MARKS.items()},
        "counts": counts(checks),
        "titles": titles(),
        "docs": DOCS,
        "curves": eps_figures(data, styles),
        "worst": worst_figure(data, styles),
        "bracket": bracket_section(data, styles),
        "smoothing": smoothing_section(data, styles),
        "patches": patch_sections(data, styles),
        "galleries": galleries(data),
        "gallery_files": {model: gallery_file(model) for model in data.model_ids},
        "training": training_figure(data, styles),
        "repro": reproducibility(data),
        "rows": result_rows(data.results),
        "format_eps": format_eps,
        "swatch": swatch,
        "has_manifest": data.manifest is not None,
    }


def _suite_field(data: SweepData, key: str) -> Any:
    return data.manifest.suite.get(key) if data.manifest is not None else None


def suite_name(data: SweepData) -> str:
    if _suite_field(data, "name"):
        return str(_suite_field(data, "name"))
    names = sorted(set(data.results["suite"]) - {""})
    return ", ".join(names) if names else data.out_dir.name


def _curve(model: str, rows: pd.DataFrame, axis: str, column: str = "accuracy", band: bool = True) -> Curve:
    rows = rows.sort_values(axis)
    low, high = (rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy()) if band else (None, None)
    return Curve(model, rows[axis].to_numpy(), rows[column].to_numpy(), low, high)


def _shared_reference(data: SweepData, norm: str) -> float | None:
    """The reference eps, drawn as a line only when every model has the same one."""
    values = {reference_eps(data.manifest, data.models[m], norm) for m in data.model_ids}
    return values.pop() if len(values) == 1 else None


def eps_figures(data: SweepData, styles: dict) -> list[dict[str, Any]]:
    """One accuracy-vs-eps figure per attack, every model overlaid with its 95% band."""
    rows = data.results[(data.results["kind"] == RowKind.ATTACK.value) & ~data.results["is_patch"]]
    figures = []
    for i, (attack, group) in enumerate(rows.groupby("attack", sort=False)):
        first = group.iloc[0]
        curves = [_curve(m, g, "eps") for m, g in group.groupby("model", sort=False)]
        norm = first["norm"]
        panel = Panel(
            curves, f"eps ({_norm_label(norm)}, pixels in [0, 1])", "accuracy", reference=_shared_reference(data, norm)
        )
        figures.append(
            {
                "attack": attack,
                "attack_type": first["attack_type"],
                "box": first["box"],
                "norm": _norm_label(norm),
                "params": first["params"],
                "svg": figure_svg([panel], styles, f"eps{i}"),
            }
        )
    return figures


def _norm_label(norm: str) -> str:
    return {"inf": "Linf", "2": "L2"}.get(norm, norm or "-")


def worst_figure(data: SweepData, styles: dict) -> Markup | None:
    """One panel per threat model (the sweep keeps Linf and L2 worst cases apart)."""
    rows = data.results[data.results["kind"] == RowKind.WORST_CASE.value]
    if rows.empty:
        return None
    panels = []
    for norm, group in rows.groupby("norm", sort=False):
        curves = [_curve(m, g, "eps") for m, g in group.groupby("model", sort=False)]
        axis = f"eps ({_norm_label(norm)}, pixels in [0, 1])"
        panels.append(Panel(curves, axis, "worst-case accuracy", reference=_shared_reference(data, norm)))
    return figure_svg(panels, styles, "worst")


def bracket_section(data: SweepData, styles: dict) -> dict[str, Any] | None:
    """Per threat model with certified rows: each model's lowest attacked accuracy (solid) and its best certified
    accuracy (dashed), the band between them shaded: the true robust accuracy lies in it."""
    table = bracket(data.results)
    if table.empty:
        return None
    panels = []
    for norm, group in table.groupby("norm", sort=False):
        curves = []
        for model, rows in group.groupby("model", sort=False):
            rows = rows.sort_values("eps")
            eps, low, high = rows["eps"].to_numpy(), rows["certified"].to_numpy(), rows["attacked"].to_numpy()
            curves += [Curve(model, eps, high), Curve(model, eps, low, low, high, thin=True)]
        axis = f"eps ({_norm_label(norm)}, pixels in [0, 1])"
        panels.append(Panel(curves, axis, "robust accuracy", reference=_shared_reference(data, norm)))
    rows = [
        {
            "model": r["model"],
            "norm": _norm_label(r["norm"]),
            "eps": format_eps(r["eps"]),
            "certified": f"{r['certified'] * 100:.1f}% ({r['certified_by']})",
            "attacked": f"{r['attacked'] * 100:.1f}% ({r['attacked_by']} at eps {format_eps(r['attacked_eps'])})",
            "gap": f"{r['gap'] * 100:.1f} pp",
        }
        for r in table.to_dict("records")
    ]
    return {"svg": figure_svg(panels, styles, "bracket", columns=min(2, len(panels))), "rows": rows}


def smoothing_section(data: SweepData, styles: dict) -> dict[str, Any] | None:
    """Randomized smoothing, apart from the rest: certified accuracy of each model's *smoothed* classifier
    against the L2 radius, one panel per smoothing entry, beside the model's own clean accuracy."""
    rows = data.results[data.results["kind"] == RowKind.SMOOTHED.value]
    if rows.empty:
        return None
    clean = data.results[data.results["kind"] == RowKind.CLEAN.value].groupby("model")["accuracy"].last()
    panels, table = [], []
    for name, group in rows.groupby("attack", sort=False):
        by_model = list(group.groupby("model", sort=False))
        panels.append(Panel([_curve(m, g, "eps") for m, g in by_model], f"{name}: L2 radius", "certified accuracy"))
        params = json.loads(group["params"].iloc[0])
        settings = f"sigma {params.get('sigma')}, {params.get('samples')} samples, alpha {params.get('alpha')}"
        for model, g in by_model:
            g = g.sort_values("eps")
            points = zip(g["eps"], g["accuracy"], strict=True)
            table.append(
                {
                    "model": model,
                    "entry": name,
                    "settings": settings,
                    "clean": f"{clean[model] * 100:.1f}%" if model in clean else "-",
                    "curve": ", ".join(f"{a * 100:.1f}% at {format_eps(e)}" for e, a in points),
                }
            )
    return {"svg": figure_svg(panels, styles, "smoothing", columns=min(2, len(panels))), "rows": table}


def adaptive_section(data: SweepData) -> list[Evaluation]:
    """The models whose attacks were adapted, judged over several draws or met a defence; [] when none was."""
    return [
        found
        for found in evaluations(data.results[["model", "kind", "attack"]].to_dict("records"), data.models).values()
        if found.shown
    ]


def patch_sections(data: SweepData, styles: dict) -> list[dict[str, Any]]:
    """Per patch attack: accuracy and target success against patch scale, and each model's patch."""
    rows = data.results[(data.results["kind"] == RowKind.ATTACK.value) & data.results["is_patch"]]
    sections = []
    for i, (attack, group) in enumerate(rows.groupby("attack", sort=False)):
        by_model = list(group.groupby("model", sort=False))
        accuracy = [_curve(m, g, "scale") for m, g in by_model]
        success = [
            _curve(m, g.dropna(subset=["target_success"]), "scale", "target_success", False) for m, g in by_model
        ]
        panels = [Panel(accuracy, PATCH_AXIS, "accuracy", "accuracy"), Panel(success, PATCH_AXIS, "", "target success")]
        pictures = [(m, _patch_picture(data, m, attack)) for m, _ in by_model]
        sections.append(
            {
                "attack": attack,
                "params": group["params"].iloc[0],
                "svg": figure_svg(panels, styles, f"patch{i}", columns=2),
                "pictures": pictures,
            }
        )
    return sections


def _patch_picture(data: SweepData, model: str, attack: str) -> str | None:
    return images.patch_uri(data.out_dir / patch_file(model, attack))


def galleries(data: SweepData) -> list[tuple[str, images.Gallery | str]]:
    found, shown = [], images.examples_per_model(len(data.model_ids))
    for model in data.model_ids:
        names = list(data.models[model].class_names or ())
        found.append((model, images.load_gallery(data.out_dir / gallery_file(model), names, shown)))
    return found


def training_figure(data: SweepData, styles: dict) -> dict[str, Any] | None:
    logs = {m: pd.DataFrame(e.training_metrics) for m, e in data.models.items() if e.training_metrics}
    if not logs:
        return None
    panels = []
    for column, secondary, title, fraction in TRAINING_PANELS:
        curves = []
        for model, log in logs.items():
            if column in log and "epoch" in log:
                curves.append(Curve(model, _num(log["epoch"]), _num(log[column])))
            if secondary and secondary in log and "epoch" in log:
                curves.append(Curve(model, _num(log["epoch"]), _num(log[secondary]), thin=True))
        ylabel = "accuracy" if fraction else "loss"
        panels.append(Panel(curves, "epoch", ylabel, title, percent=fraction, integer_x=True))
    return {"svg": figure_svg(panels, styles, "training", columns=2), "models": list(logs), "tables": _schedule(logs)}


def _num(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)


def _schedule(logs: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """Per model: epochs, final lr and eps, total training time: the numbers a plot hides."""
    rows = []
    for model, log in logs.items():
        last = log.iloc[-1]
        rows.append(
            {
                "model": model,
                "epochs": len(log),
                "eps": format_eps(last.get("eps", float("nan"))),
                "lr": f"{float(last['lr']):.2e}" if "lr" in log else "-",
                "seconds": f"{_num(log['seconds']).sum():.0f}" if "seconds" in log else "-",
            }
        )
    return rows


def reproducibility(data: SweepData) -> dict[str, Any]:
    manifest = data.manifest.to_json() if data.manifest is not None else {}  # as written, older fields too
    command = manifest.get("command", "")
    if isinstance(command, list):
        command = shlex.join(str(part) for part in command)
    fields = [(key, _plain(manifest[key])) for key in PROVENANCE if manifest.get(key) not in (None, "")]
    suite = manifest.get("suite") if isinstance(manifest.get("suite"), dict) else {}
    return {
        "command": str(command),
        "fields": fields,
        "suite": [(k, _plain(v)) for k, v in suite.items() if k != "text" and v not in (None, "")],
        "suite_text": pre_text(str(suite.get("text", ""))),
        "config": _pairs(manifest.get("config")),
        "versions": _pairs(manifest.get("versions")),
        "machine": _pairs(manifest.get("machine")),
        "timings": _pairs(manifest.get("timings")),
        "models": [_model_row(data, m) for m in data.model_ids],
        "seconds": _seconds(data.results),
        "manifest": pre_text(compact_json(manifest)) if manifest else "",
    }


def pre_text(text: str) -> Markup:
    """Text for the inside of a <pre>, escaped as element content needs (& < >), not as an attribute: autoescape
    would also turn each of JSON's quotes into 5 bytes."""
    return Markup(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def compact_json(value: Any, indent: str = "", width: int = 110) -> str:
    """JSON indented like `indent=2`, but a list or object that fits in `width` characters stays on one line:
    a model check or an epoch of the training log is one line, and the page carries half the whitespace."""
    flat = json.dumps(value, default=str, separators=(", ", ": "))
    if len(indent) + len(flat) <= width or not isinstance(value, (dict, list)) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(str(k))}: {compact_json(v, inner, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    items = [inner + compact_json(v, inner, width) for v in value]
    return "[\n" + ",\n".join(items) + f"\n{indent}]"


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _pairs(value: Any) -> list[tuple[str, str]]:
    return [(str(k), _plain(v)) for k, v in value.items()] if isinstance(value, dict) else []


def _model_row(data: SweepData, model: str) -> dict[str, str]:
    entry = data.models[model]
    rows = data.results[data.results["model"] == model].iloc[0]
    threat = entry.threat_model
    if threat is not None:
        threat = f"{_norm_label(str(threat.get('norm', '')))} eps {format_eps(threat.get('eps'))}"
    return {
        "model": model,
        "path": _plain(entry.path),
        "sha256": _plain(entry.sha256 or rows["checkpoint_sha256"]),
        "dataset": _plain(entry.dataset or rows["dataset"]),
        "arch": _plain(entry.arch or rows["arch"]),
        "method": _plain(_method(entry, rows["train_method"])),
        "preprocessing": _plain(entry.preprocessing_label or rows.get("preprocessing") or "-"),
        "threat": _plain(threat or "-"),
    }


def _method(entry: ModelEntry, fallback: str) -> str:
    """The training method, with the training guard's verdict when the run did not simply finish."""
    method = entry.method or fallback or "-"
    status = entry.training_status
    return f"{method} ({status})" if status in ("not-robust", "stopped-early") else method


def _seconds(results: pd.DataFrame) -> list[tuple[str, str]]:
    times = results[results["kind"] == RowKind.ATTACK.value].groupby("attack", sort=False)["seconds"].sum(min_count=1)
    return [(attack, f"{s:.1f}") for attack, s in times.items() if not np.isnan(s)]


def result_rows(results: pd.DataFrame) -> list[dict[str, str]]:
    """Every number of results.csv, for the table at the end: a failing check never hides one."""
    rows = []
    for r in results.to_dict("records"):
        rows.append(
            {
                "model": r["model"],
                "attack": r["attack"] + (" (probe)" if r["kind"] == RowKind.PROBE.value else ""),
                "norm": _norm_label(r["norm"])
                if r["kind"] in (RowKind.ATTACK.value, RowKind.PROBE.value) and r["norm"]
                else "",
                "at": f"scale {format_eps(r['scale'])}" if r["is_patch"] else format_eps(r["eps"]),
                "n": "-" if np.isnan(r["n"]) else f"{r['n']:.0f}",
                "accuracy": pct(r),
                "interval": f"[{r['ci_low'] * 100:.1f}, {r['ci_high'] * 100:.1f}]",
                "target": pct(r["target_success"]),
                "seconds": "-" if np.isnan(r["seconds"]) else f"{r['seconds']:.1f}",
            }
        )
    return rows


def checks_json(checks: list[Check]) -> dict[str, Any]:
    return {"format": CHECKS_FORMAT, "counts": counts(checks), "checks": [c.to_dict() for c in checks]}


def render_markdown(data: SweepData, table: Headline, checks: list[Check], compared: Comparisons) -> str:
    """summary.md: the headline table and the checks that did not pass, ready to paste into a PR."""
    tally = counts(checks)
    lines = [
        f"## Robustness: {markdown_escape(suite_name(data))}",
        "",
        "Accuracy with 95% Wilson intervals at each attack's reference eps (pixels in [0, 1]); "
        "**bold** = the strongest attack; worst-case = an example counts only if it survives every attack.",
        "",
        markdown_table(table),
        "",
    ]
    if table.guessed:
        lines += ["\\* no reference eps for this norm in the manifest: the middle of the eps grid.", ""]
    if table.caveats:
        lines += [f"*{table.caveat_note(markdown_escape)}.*", ""]
    lines.append(", ".join(f"{tally[s.value]} {s.value}" for s in Status) + f" ({DOCS})")
    lines.append("")
    for check in checks:
        if check.status in (Status.FAIL, Status.WARN):
            model = f" ({markdown_escape(check.model)})" if check.model else ""
            name, message = markdown_escape(check.name), markdown_escape(check.message)
            lines.append(f"- **{check.status.value.upper()}** {name}{model}: {message}")
    for section in (_comparisons_markdown(compared), _adaptive_markdown(adaptive_section(data))):
        lines += ([""] if section and lines[-1] else []) + section
    return "\n".join(lines).rstrip() + "\n"


def _comparisons_markdown(compared: Comparisons) -> list[str]:
    """summary.md's paired comparisons: one table per pair, at the headline eps."""
    if not compared.compared:
        return []
    lines = [
        "### Paired comparisons",
        "",
        "Difference later - earlier in points [95% paired interval], McNemar exact p Holm-adjusted per pair; "
        f"significant at {compared.alpha:g} after adjustment, otherwise it may be noise."
        + (f" {markdown_escape(compared.note)}." if compared.note else ""),
    ]
    for pair in compared.pairs:
        old, new = markdown_escape(pair.old), markdown_escape(pair.new)
        lines += ["", f"**{new} vs {old}**", ""]
        if not pair.rows:
            lines.append(f"Not compared: {markdown_escape(pair.note)}")
            continue
        lines += [f"| row | {old} | {new} | difference | p (Holm) | significant |", "|---|---:|---:|---:|---:|---|"]
        for row in pair.rows:
            r = row.result
            verdict = "yes" if row.significant(compared.alpha) else "no"
            lines.append(
                f"| {markdown_escape(row.key.label)} | {r.old_accuracy:.1%} | {r.new_accuracy:.1%} | "
                f"{100 * r.difference:+.1f} [{100 * r.low:+.1f}, {100 * r.high:+.1f}] | {row.p_holm:.2g} | {verdict} |"
            )
    return lines


def _adaptive_markdown(found: list[Evaluation]) -> list[str]:
    """summary.md's short Adaptive evaluation: per model, the defences, the judging rule and each adaptation."""
    if not found:
        return []
    lines = ["### Adaptive evaluation", ""]
    for evaluation in found:
        said = [defence.account for defence in evaluation.defences]
        said += [evaluation.judging] if evaluation.judging else []
        summary = "; ".join(said) or "attacks adapted to the model"
        lines.append(f"- **{markdown_escape(evaluation.model)}**: {markdown_escape(summary)}")
        lines += [
            f"  - {markdown_escape(a.attack)}: {a.technique.value} {markdown_escape(a.setting)} "
            f"({markdown_escape(a.reason)})"
            for a in evaluation.adaptations
        ]
    return lines
