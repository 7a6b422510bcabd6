"""Collect run directories into comparison tables like the papers' (markdown, CSV, PNG plots).

Sections of the markdown report:

- Table I: methods x K x datasets, NME mean +- std over seeds under each run's own protocol,
  with the mean-shape floor, supervised references (no regressor) and the published numbers
  (``reports/published.csv``), each marked with the protocol it was measured under;
- the same checkpoints under several protocols side by side (``lmbench eval --protocol``);
- Table II: NME against the number N of annotated images that fit the regressor;
- ablations over seeds (every config setting that varies within a method becomes a variant);
- reference floors (mean shape, untrained detector) and supervised upper bounds;
- NME during training, for runs made with ``--eval-every`` (their ``curve.csv``), at the steps
  every seed of a group was probed;
- plots (N sweep, cumulative error distribution, per-landmark NME, NME during training) and
  every run.

A run directory whose metrics.json is missing keys or unreadable is skipped with a warning
naming the file; a broken evaluation.json or config.json only drops what needs it.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lmbench import atomic
from lmbench.config import upgrade_saved_config
from lmbench.curve import CURVE_CSV, read_curve_csv
from lmbench.protocols import describe, leaks

REQUIRED = ("method", "K", "dataset", "nme", "nme_mean_shape", "steps", "train_seconds", "images_per_second", "seed")
OPTIONAL = ("nme_backward", "nme_untrained", "failure_rate_10", "auc_10", "nme_fit_split", "test_crop_used",
            "wandering_points", "border_points")
SCALAR_METRICS = ("nme", "nme_backward", "failure_rate_10", "auc_10", "nme_mean_shape", "nme_untrained")
# config.json settings that never make a run a different variant
NOT_VARIANTS = {"method", "K", "dataset", "seed", "device", "threads", "data_root", "environment", "dataset_info",
                "perceptual_weights_source", "checkpoint_every", "log_every", "eval_every", "eval_batch_size", "protocol.name",
                "protocol.floors", "train_options"}


def _is_variant_key(key: str) -> bool:
    """Whether a flattened config key can make a run a different variant (prefixes count too)."""
    parts = key.split(".")
    return not any(".".join(parts[:i]) in NOT_VARIANTS for i in range(1, len(parts) + 1))
PUBLISHED_COLUMNS = ("source", "citation", "method", "K", "dataset", "metric", "n_fit", "value", "protocol", "note")


class ReportWarning(UserWarning):
    """A run directory (or one of its files) was skipped."""


def _warn(message: str) -> None:
    warnings.warn(message, ReportWarning, stacklevel=3)


# -- collecting -----------------------------------------------------------------------------
def _read_optional(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = atomic.read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return data
    except (OSError, ValueError) as error:
        _warn(f"ignoring {error if str(path) in str(error) else f'{path}: {error}'}")
        return None


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def collect_runs(runs_dir: str | Path) -> pd.DataFrame:
    """One row per run directory under ``runs_dir`` with a readable, complete metrics.json."""
    rows = []
    for path in sorted(Path(runs_dir).glob("**/metrics.json")):
        try:
            metrics = atomic.read_json(path)
            if not isinstance(metrics, dict):
                raise ValueError("expected a JSON object")
            if metrics.get("evaluated") is False:
                raise ValueError(f"not evaluated ({metrics.get('not_evaluated_because', 'no annotations')})")
            missing = [key for key in REQUIRED if key not in metrics]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            if not isinstance(metrics["nme"], (int, float)):
                raise ValueError(f"nme is not a number: {metrics['nme']!r}")
        except (OSError, ValueError) as error:
            reason = str(error) if str(path) in str(error) else f"{path}: {error}"
            _warn(f"skipping {reason}")
            continue
        run = path.parent
        config = upgrade_saved_config(_read_optional(run / "config.json") or {})
        protocol = metrics.get("protocol") or config.get("protocol") or {}
        rows.append({
            **{key: metrics[key] for key in REQUIRED},
            **{key: metrics.get(key, math.nan) for key in OPTIONAL},
            "supervised": bool(metrics.get("supervised", False)),
            "protocol": protocol.get("name", "lmbench"),
            "protocol_record": protocol,
            "nme_by_protocol": metrics.get("nme_by_protocol") or {},
            "evaluation": _read_optional(run / "evaluation.json"),
            "config_flat": {k: v for k, v in _flatten(config).items() if _is_variant_key(k)},
            "curve": _read_curve(run / CURVE_CSV),
            "run": str(run),
        })
    columns = [*REQUIRED, *OPTIONAL, "supervised", "protocol", "protocol_record", "nme_by_protocol", "evaluation",
               "config_flat", "curve", "run"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["variant"] = _variants(frame)
    return frame


def _read_curve(path: Path) -> dict[int, float]:
    """A run's learning curve (lmbench.curve.read_curve_csv); {} with a warning when unreadable."""
    try:
        return read_curve_csv(path)
    except (OSError, KeyError, TypeError, ValueError) as error:
        _warn(f"{path}: no learning curve read ({error})")
        return {}


def _short(value) -> str:
    text = str(value)
    if "/" in text and len(text) > 30:
        text = Path(text).name
    return text


def _variants(frame: pd.DataFrame) -> list[str]:
    """The config settings that vary between runs of the same (method, dataset, K), as ``key=value``."""
    labels = [""] * len(frame)
    for _, group in frame.groupby(["method", "dataset", "K"], sort=False):
        configs = list(group["config_flat"])
        keys = sorted({k for c in configs for k in c})
        varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
        for index, config in zip(group.index, configs):
            labels[frame.index.get_loc(index)] = ", ".join(
                f"{k}={_short(config[k]) if k in config else '(unset)'}" for k in varying)
    return labels


def load_published(path: str | Path | None) -> pd.DataFrame:
    """The papers' numbers (reports/published.csv); an empty frame when there is no file."""
    if path is None or not Path(path).exists():
        return pd.DataFrame(columns=PUBLISHED_COLUMNS)
    frame = pd.read_csv(path, dtype={"n_fit": str, "note": str, "citation": str})
    missing = [c for c in PUBLISHED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    frame["n_fit"] = frame["n_fit"].fillna("")
    frame["note"] = frame["note"].fillna("")
    return frame


def default_published() -> Path | None:
    """reports/published.csv in the working directory, else the one beside the package."""
    for candidate in (Path("reports/published.csv"), Path(__file__).resolve().parents[1] / "reports" / "published.csv"):
        if candidate.exists():
            return candidate
    return None


# -- formatting -----------------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    if isinstance(value, (float, np.floating)):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, columns: list[tuple[str, str]]) -> str:
    header = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[key]) for key, _ in columns) + " |")
    return "\n".join(lines)


def _grid(rows: list[str], columns: list[str], cells: dict, corner: str) -> str:
    lines = ["| " + " | ".join([corner, *columns]) + " |", "|" + "|".join("---" for _ in range(len(columns) + 1)) + "|"]
    for row in rows:
        lines.append("| " + " | ".join([row, *(cells.get((row, c), "") for c in columns)]) + " |")
    return "\n".join(lines)


def mean_std(values) -> tuple[float, float, int]:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return math.nan, math.nan, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def _pm(values, digits: int = 2, count: bool = True) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" + (f" ({n})" if count else "")


def run_label(row) -> str:
    label = row["method"]
    if row.get("variant"):
        label += f" [{row['variant']}]"
    if row.get("supervised"):
        label += " (supervised, no regressor)"
    if row.get("protocol", "lmbench") != "lmbench":
        label += f" <{row['protocol']}>"
    return label


def published_label(row) -> str:
    return f"*published:* {row['source']}: {row['method']} — protocol {row['protocol']}"


# -- tables ---------------------------------------------------------------------------------
RUN_COLUMNS = [
    ("method", "method"),
    ("K", "K"),
    ("dataset", "dataset"),
    ("nme", "NME %"),
    ("nme_mean_shape", "mean-shape NME %"),
    ("steps", "steps"),
    ("train_seconds", "train s"),
    ("images_per_second", "images/s"),
    ("seed", "seed"),
    ("protocol", "protocol"),
    ("variant", "variant"),
]


def runs_table(frame: pd.DataFrame) -> str:
    frame = frame.sort_values(["dataset", "K", "method", "seed"])
    return markdown_table(frame, RUN_COLUMNS)


def _points_cell(group: pd.DataFrame) -> str:
    """Mean counts of wandering and border points (lmbench.evaluate.point_stability), or '-'."""
    if "wandering_points" not in group or group["wandering_points"].isna().all():
        return "-"
    return f"{group['wandering_points'].mean():.1f} / {group['border_points'].mean():.1f}"


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over seeds for each (dataset, K, method, variant, protocol): the ablation table."""
    rows = []
    for key, group in frame.groupby(["dataset", "K", "method", "variant", "protocol"], sort=True):
        rows.append({
            **dict(zip(["dataset", "K", "method", "variant", "protocol"], key)),
            "runs": len(group),
            "nme_mean": mean_std(group["nme"])[0], "nme_std": mean_std(group["nme"])[1],
            "NME %": _pm(group["nme"], count=False),
            "backward %": _pm(group["nme_backward"], count=False),
            "failure % (>10)": _pm(group["failure_rate_10"], count=False),
            "AUC@10": _pm(group["auc_10"], 3, count=False),
            "wandering / border points": _points_cell(group),
            "fit-split NME %": mean_std(group["nme_fit_split"])[0],
            "mean_shape": mean_std(group["nme_mean_shape"])[0],
            "untrained": _pm(group["nme_untrained"], count=False),
            "train_seconds": mean_std(group["train_seconds"])[0],
            "images_per_second": mean_std(group["images_per_second"])[0],
        })
    return pd.DataFrame(rows)


def _curve_groups(frame: pd.DataFrame) -> dict[str, tuple[list[int], list[list[float]]]]:
    """{group label: (steps every run of the group was probed at, [NMEs per step, one per run])}
    for the groups whose runs all have a learning curve."""
    groups = {}
    if "curve" not in frame:
        return groups
    for (label, k, dataset), group in frame.groupby([frame.apply(run_label, axis=1), "K", "dataset"], sort=True):
        curves = list(group["curve"])
        if not curves or not all(curves):
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if steps:
            groups[f"{label} K={k} {dataset}"] = (steps, [[c[step] for c in curves] for step in steps])
    return groups


def curve_table(frame: pd.DataFrame) -> str | None:
    """NME (mean ± std over seeds) at each probed step, one column per group; None without curves."""
    groups = _curve_groups(frame)
    if not groups:
        return None
    cells, steps = {}, set()
    for name, (group_steps, values) in groups.items():
        for step, nmes in zip(group_steps, values):
            cells[(str(step), name)] = _pm(nmes) if len(nmes) > 1 else _fmt(nmes[0])
            steps.add(step)
    return _grid([str(s) for s in sorted(steps)], list(groups), cells, "step")


def table_one(frame: pd.DataFrame, published: pd.DataFrame) -> str:
    """Per K: rows = methods (+ floor, published), columns = datasets; mean +- std (seeds)."""
    ks = sorted(set(int(k) for k in frame["K"])) or sorted(set(int(k) for k in published["K"].dropna()))
    parts = []
    for k in ks:
        runs = frame[frame["K"] == k]
        pub = published[(published["metric"] == "nme") & (published["n_fit"] == "")]
        pub = pub[(pub["K"] == k) | pub["K"].isna()]
        datasets = list(dict.fromkeys([*sorted(runs["dataset"]), *pub["dataset"]]))
        cells, rows = {}, []
        for label, group in runs.groupby(runs.apply(run_label, axis=1), sort=True):
            rows.append(label)
            for dataset, cell in group.groupby("dataset"):
                cells[(label, dataset)] = _pm(cell["nme"])
        if len(runs):
            rows.append("floor: mean shape")
            for dataset, cell in runs.groupby("dataset"):
                cells[("floor: mean shape", dataset)] = _pm(cell["nme_mean_shape"], count=False)
        for _, row in pub.iterrows():
            label = published_label(row)
            if label not in rows:
                rows.append(label)
            cells[(label, row["dataset"])] = f"{row['value']:.2f}"
        parts += [f"### K = {k}", "", _grid(rows, datasets, cells, "method"), ""]
    return "\n".join(parts)


def _protocol_header(name: str, records: list[dict]) -> str:
    crops = {r.get("test_crop_used", "?") for r in records}
    protocol = next((r["protocol"] for r in records if r.get("protocol")), None)
    header = name
    if protocol is not None and leaks(protocol):
        header += " (GT-box crop: leaks)" if crops - {"none"} else " (GT-box crop not applied: no crop step)"
    return header


def protocol_table(frame: pd.DataFrame) -> str | None:
    """The same checkpoints under several protocols (``nme_by_protocol``), side by side."""
    entries: dict = {}
    for _, row in frame.iterrows():
        label = f"{row['method']}" + (f" [{row['variant']}]" if row["variant"] else "")
        for name, record in (row["nme_by_protocol"] or {}).items():
            entries.setdefault((label, int(row["K"]), row["dataset"]), {}).setdefault(name, []).append(record)
    names = sorted({n for per in entries.values() for n in per}, key=lambda n: (n != "lmbench", n))
    if len(names) < 2:
        return None
    headers = {n: _protocol_header(n, [r for per in entries.values() for r in per.get(n, [])]) for n in names}
    rows, cells = [], {}
    for (label, k, dataset), per in sorted(entries.items()):
        row = f"{label} | {k} | {dataset}"
        rows.append(row)
        for name, records in per.items():
            cells[(row, headers[name])] = _pm([r.get("nme") for r in records])
    table = _grid(rows, [headers[n] for n in names], cells, "method | K | dataset")
    lines = [table.replace("|---|", "|---|---|---|", 1)]
    described = {n: next((r["protocol"] for per in entries.values() for r in per.get(n, []) if r.get("protocol")), None)
                 for n in names}
    lines += ["", *(f"- {describe(p)}" for p in described.values() if p)]
    return "\n".join(lines)


def _sweep_values(row) -> dict[str, list[float]]:
    evaluation = row["evaluation"] or {}
    record = (evaluation.get("protocols") or {}).get(row["protocol"]) or {}
    values = {}
    for entry in record.get("sweep", []):
        values.setdefault("all" if entry.get("all") else str(entry["n"]), []).extend(entry.get("values", []))
    return values


def _n_order(labels) -> list[str]:
    return sorted(set(labels), key=lambda s: (s == "all", int(s) if s.isdigit() else 0))


def table_two(frame: pd.DataFrame, published: pd.DataFrame) -> str | None:
    """NME against N annotated images; values pooled over seeds and seeded subsets."""
    pooled: dict = {}
    for _, row in frame.iterrows():
        for n, values in _sweep_values(row).items():
            pooled.setdefault(f"{run_label(row)} | {int(row['K'])} | {row['dataset']}", {}).setdefault(n, []).extend(values)
    pub = published[(published["metric"] == "nme") & (published["n_fit"] != "")]
    if not pooled and pub.empty:
        return None
    columns = _n_order([n for per in pooled.values() for n in per] + list(pub["n_fit"]))
    cells, rows = {}, []
    for label, per in sorted(pooled.items()):
        rows.append(label)
        for n, values in per.items():
            cells[(label, n)] = _pm(values, count=False)
    for _, row in pub.iterrows():
        label = f"{published_label(row)} | {int(row['K'])} | {row['dataset']}"
        if label not in rows:
            rows.append(label)
        cells[(label, row["n_fit"])] = f"{row['value']:.2f}"
    table = _grid(rows, [f"N={c}" for c in columns], {(r, f"N={c}"): v for (r, c), v in cells.items()},
                  "method | K | dataset")
    return table.replace("|---|", "|---|---|---|", 1)


def floors_table(frame: pd.DataFrame) -> str:
    rows = []
    for (dataset, k, method, variant, supervised), group in frame.groupby(
            ["dataset", "K", "method", "variant", "supervised"], sort=True):
        rows.append({"dataset": dataset, "K": k,
                     "method": method + (f" [{variant}]" if variant else "")
                               + (" (supervised, no regressor)" if supervised else ""),
                     "NME %": _pm(group["nme"]), "untrained detector NME %": _pm(group["nme_untrained"], count=False),
                     "mean shape NME %": _pm(group["nme_mean_shape"], count=False)})
    return markdown_table(pd.DataFrame(rows), [(c, c) for c in
                                                ("dataset", "K", "method", "NME %", "untrained detector NME %",
                                                 "mean shape NME %")])


# -- plots ----------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "plot"


def _own_record(row) -> dict:
    return ((row["evaluation"] or {}).get("protocols") or {}).get(row["protocol"]) or {}


def make_plots(frame: pd.DataFrame, published: pd.DataFrame, folder: Path) -> dict[str, list[Path]]:
    """N-sweep curves, CED curves and per-landmark bars; returns {section: [png paths]}."""
    from lmbench.plots import Series, bar_chart, line_chart

    made: dict[str, list[Path]] = {"sweep": [], "ced": [], "per_landmark": [], "curve": []}
    series = []
    for (label, k, dataset), group in frame.groupby([frame.apply(run_label, axis=1), "K", "dataset"], sort=True):
        per_n: dict = {}
        for _, row in group.iterrows():
            evaluation = _own_record(row)
            for entry in evaluation.get("sweep", []):
                per_n.setdefault(int(entry["n"]), []).extend(entry.get("values", []))
        if per_n:
            ns = sorted(per_n)
            stats = [mean_std(per_n[n]) for n in ns]
            series.append(Series(f"{label} K={k} {dataset}", ns, [s[0] for s in stats], [s[1] for s in stats]))
    pub = published[(published["metric"] == "nme") & published["n_fit"].str.isdigit()]
    for (source, method, k, dataset, protocol), group in pub.groupby(["source", "method", "K", "dataset", "protocol"]):
        group = group.sort_values("n_fit", key=lambda s: s.astype(int))
        series.append(Series(f"published: {method}, {dataset} ({protocol})", list(group["n_fit"].astype(int)),
                             list(group["value"]), dashed=True))
    if series:
        made["sweep"].append(line_chart(series, folder / "sweep.png", title="NME against N annotated images",
                                        xlabel="N images fitting the regressor (log)", ylabel="NME %", log_x=True))
    for (k, dataset), runs in frame.groupby(["K", "dataset"], sort=True):
        curves, bars, errors, names = [], {}, {}, None
        mean_shape = None
        for label, group in runs.groupby(runs.apply(run_label, axis=1), sort=True):
            records = [r for r in (_own_record(row) for _, row in group.iterrows()) if r.get("ced")]
            if not records:
                continue
            ced = records[0]["ced"]
            fractions = np.mean([r["ced"]["fraction"] for r in records], axis=0)
            curves.append(Series(label, ced["thresholds"], list(fractions), markers=False))
            mean_shape = mean_shape or ced.get("fraction_mean_shape")
            per_landmark = np.array([r["per_landmark"]["nme"] for r in records])
            names = names or records[0]["per_landmark"]["names"]
            bars[label] = list(per_landmark.mean(0))
            errors[label] = list(per_landmark.std(0, ddof=1)) if len(records) > 1 else [0.0] * per_landmark.shape[1]
        if not curves:
            continue
        if mean_shape:
            curves.append(Series("floor: mean shape", curves[0].x, mean_shape, dashed=True, markers=False,
                                 colour=(120, 120, 120)))
        stem = _slug(f"{dataset}_K{k}")
        made["ced"].append(line_chart(curves, folder / f"ced_{stem}.png", ylim=(0.0, 1.0),
                                      title=f"Cumulative error distribution: {dataset}, K={k}",
                                      xlabel="NME % (inter-ocular)", ylabel="fraction of test images"))
        made["per_landmark"].append(bar_chart(list(names), bars, folder / f"per_landmark_{stem}.png", errors=errors,
                                              title=f"Per-landmark NME: {dataset}, K={k}", ylabel="NME %"))
    learning = [Series(name, steps, [mean_std(v)[0] for v in values], [mean_std(v)[1] for v in values])
                for name, (steps, values) in _curve_groups(frame).items()]
    if learning:
        made["curve"].append(line_chart(learning, folder / "curves.png", title="Test NME during training (mean ± std over seeds)",
                                        xlabel="training step", ylabel="NME %"))
    return made


# -- CSV ------------------------------------------------------------------------------------
def _protocol_records(row) -> dict[str, dict]:
    if row["nme_by_protocol"]:
        return row["nme_by_protocol"]
    return {row["protocol"]: {m: row[m] for m in SCALAR_METRICS if m in row}}


def results_csv(frame: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Long format: one row per (source, method, variant, K, dataset, protocol, metric, N)."""
    long = []
    for _, row in frame.iterrows():
        base = {"source": "lmbench", "method": row["method"], "variant": row["variant"], "K": row["K"],
                "dataset": row["dataset"], "supervised": row["supervised"]}
        for name, record in _protocol_records(row).items():
            for metric in SCALAR_METRICS:
                value = record.get(metric)
                if isinstance(value, (int, float)) and not math.isnan(value):
                    long.append({**base, "protocol": name, "metric": metric, "n_fit": "", "value": value})
        for n, values in _sweep_values(row).items():
            long.extend({**base, "protocol": row["protocol"], "metric": "nme", "n_fit": n, "value": v} for v in values)
    rows = []
    if long:
        data = pd.DataFrame(long)
        keys = ["source", "method", "variant", "K", "dataset", "supervised", "protocol", "metric", "n_fit"]
        for key, group in data.groupby(keys, sort=True):
            mean, std, n = mean_std(group["value"])
            rows.append({**dict(zip(keys, key)), "mean": mean, "std": std, "count": n, "citation": "", "note": ""})
    for _, row in published.iterrows():
        rows.append({"source": f"published: {row['source']}", "method": row["method"], "variant": "",
                     "K": "" if pd.isna(row["K"]) else int(row["K"]), "dataset": row["dataset"],
                     "supervised": row["protocol"] == "supervised", "protocol": row["protocol"], "metric": row["metric"],
                     "n_fit": row["n_fit"], "mean": row["value"], "std": "", "count": "", "citation": row["citation"],
                     "note": row["note"]})
    return pd.DataFrame(rows, columns=["source", "method", "variant", "K", "dataset", "supervised", "protocol", "metric",
                                       "n_fit", "mean", "std", "count", "citation", "note"])


# -- the report -----------------------------------------------------------------------------
def build_report(frame: pd.DataFrame, runs_dir: str | Path, *, published: pd.DataFrame | None = None,
                 plots: dict[str, list[Path]] | None = None, relative_to: Path | None = None) -> str:
    published = load_published(None) if published is None else published
    if frame.empty:
        return f"# lmbench report\n\nNo runs found under `{runs_dir}`.\n"
    protocols = {row["protocol"]: row["protocol_record"] for _, row in frame.iterrows() if row["protocol_record"]}
    parts = [
        "# lmbench report",
        "",
        f"Runs under `{runs_dir}`: {len(frame)}. NME is in percent of the ground-truth inter-ocular distance; "
        "± is the standard deviation over seeds (the number of runs in brackets). Published numbers are "
        "*marked* and carry the protocol they were measured under: they are on the real datasets, and a protocol "
        "with the ground-truth-box test crop leaks test annotations into the input.",
        "",
        "Protocols of these runs:",
        "",
        *(f"- {describe(p)}" for p in protocols.values()),
        "",
        "## Table I: NME by method, K and dataset",
        "",
        table_one(frame, published),
    ]
    side = protocol_table(frame)
    if side:
        parts += ["## The same checkpoints under several protocols", "", side, ""]
    sweep = table_two(frame, published)
    if sweep:
        parts += ["## Table II: NME against the number N of annotated images", "",
                  "lmbench: seeded random subsets (protocol.repeats per N, N = all is one fit), pooled over seeds; "
                  "N is capped by the size of the fit split.", "", sweep, ""]
    summary = seed_summary(frame)
    parts += [
        "## Ablations over seeds", "",
        markdown_table(summary, [("dataset", "dataset"), ("K", "K"), ("method", "method"), ("variant", "variant"),
                                 ("protocol", "protocol"), ("runs", "seeds"), ("NME %", "NME % (mean ± std)"),
                                 ("backward %", "backward NME %"), ("failure % (>10)", "failure % (>10)"),
                                 ("AUC@10", "AUC@10"), ("wandering / border points", "wandering / border points"),
                                 ("fit-split NME %", "fit-split NME %"),
                                 ("train_seconds", "train s"), ("images_per_second", "images/s")]),
        "",
        "## Reference floors and supervised upper bounds", "",
        "The mean training shape, and an untrained detector of the same architecture (seeded with the run's seed) "
        "through the same regressor; supervised references predict the annotated points directly (no regressor).",
        "",
        floors_table(frame),
        "",
    ]
    curves = curve_table(frame)
    if curves:
        parts += ["## NME during training", "",
                  "Runs made with `lmbench run --eval-every N`: the test NME of the run's own protocol every N steps "
                  "(mean ± std over seeds, the number of runs in brackets), at the steps every run of a column was "
                  "probed; the last step's is the final evaluation's.", "", curves, ""]
    if plots and any(plots.values()):
        base = (relative_to or Path(".")).resolve()
        parts += ["## Plots", ""]
        titles = {"sweep": "N sweep", "ced": "Cumulative error distribution", "per_landmark": "Per-landmark NME",
                  "curve": "NME during training"}
        for section, paths in plots.items():
            for path in paths:
                link = Path(path).resolve()
                link = link.relative_to(base) if link.is_relative_to(base) else link
                parts += [f"![{titles[section]}: {link.stem}]({link.as_posix()})", ""]
    parts += ["## All runs", "", runs_table(frame), ""]
    return "\n".join(parts)


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    plots: dict = field(default_factory=dict)
    text: str = ""


def write_report(runs_dir: str | Path, out: str | Path, *, csv_out: str | Path | None = None,
                 published: str | Path | None = None, plots: bool = True) -> ReportFiles:
    """Collect, write the markdown, the CSV and (``plots``) the PNGs in ``<out dir>/plots``."""
    out = Path(out)
    csv_out = Path(csv_out) if csv_out else out.with_suffix(".csv")
    frame = collect_runs(runs_dir)
    table = load_published(published)
    made = make_plots(frame, table, out.parent / "plots") if plots and not frame.empty else {}
    text = build_report(frame, runs_dir, published=table, plots=made, relative_to=out.parent)
    atomic.write_text(out, text)
    atomic.write_text(csv_out, results_csv(frame, table).to_csv(index=False))
    return ReportFiles(out, csv_out, made, text)
