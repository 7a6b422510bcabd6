"""The learning curve: the run's own protocol scored every ``eval_every`` training steps.

``lmbench run --eval-every N`` (off by default) asks how NME moves with training, so that one
run answers what several runs at different ``--steps`` would. A probe changes nothing about
training: the detector runs in evaluation mode (BatchNorm's running statistics, which it
does not update), no random number is drawn, and the method goes back to training mode, so a
run with probes trains exactly as one without (tests check the weights bit for bit). A probe
skips what only the final evaluation needs (the floors and the N sweep); its NME at the last
step equals the final evaluation's. Its time is left out of ``train_seconds`` and images/s.
``nme_fit_split`` (the regressor's error on the images it was fitted on) involves no test
image: it is the curve to choose a step count or a recipe by; ``nme`` is for looking.

The probes are written into the training log (``metrics.jsonl``: the record of that step
gains ``nme``, ``nme_backward``, ``nme_mean_shape``, ``nme_fit_split``, ``wandering_points``,
``border_points`` and ``probe_seconds``), so ``--resume`` keeps exactly the probes of the steps it keeps;
``curve.csv`` and ``curve.png`` are drawn from the log at the end of the run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import torch

from lmbench import atomic
from lmbench.config import RunConfig
from lmbench.data import DatasetSplits

CURVE_CSV = "curve.csv"
CURVE_FIGURE = "curve.png"
#: What a probe records, in curve.csv's column order (after ``step`` and ``train_seconds``).
PROBED = ("nme", "nme_backward", "nme_mean_shape", "nme_fit_split", "wandering_points", "border_points")


def due(config: RunConfig, done: int) -> bool:
    """Whether the step just finished (``done`` steps) is probed: every ``eval_every`` and the last."""
    return config.eval_every > 0 and (done % config.eval_every == 0 or done == config.steps)


def make_probe(method, data: DatasetSplits, config: RunConfig, device) -> Callable[[], dict]:
    """A function scoring ``method``'s detector now under ``config.protocol`` on ``data``
    (which must hold the protocol's annotated splits, with its test crop)."""
    from lmbench.evaluate import evaluate
    from lmbench.evaluate_direct import evaluate_direct

    protocol = config.protocol

    def probe() -> dict:
        was_training = method.training
        method.eval()
        try:
            with torch.no_grad():
                if method.predicts_annotations:  # supervised references: their points are the annotations
                    result = evaluate_direct(method.detect, data, protocol, batch_size=config.eval_batch_size,
                                             device=device)
                else:
                    result = evaluate(method.detect, data, protocol, batch_size=config.eval_batch_size,
                                      device=device, sweep=False)
        finally:
            method.train(was_training)
        return {key: result[key] for key in PROBED if key in result}

    return probe


def read_curve(log_path: str | Path) -> list[dict]:
    """The probed records of a training log (``metrics.jsonl``), in step order."""
    path = Path(log_path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
        if "nme" in record:
            rows.append(record)
    return sorted(rows, key=lambda r: r["step"])


def curve_csv(rows: list[dict]) -> str:
    columns = ["step", "train_seconds", *PROBED]
    lines = [",".join(columns)]
    for row in rows:
        cells = []
        for key in columns:
            value = row.get(key, "")
            cells.append(f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def read_curve_csv(path: str | Path) -> dict[int, float]:
    """{step: NME} from a run's curve.csv (written by :func:`write_curve`); {} when it is absent."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {int(row["step"]): float(row["nme"]) for row in csv.DictReader(handle)}


def write_curve(run_dir: str | Path, log_path: str | Path, title: str) -> list[dict]:
    """curve.csv and curve.png from the probes in the training log; nothing when it has none."""
    from lmbench.plots import Series, line_chart

    run_dir = Path(run_dir)
    rows = read_curve(log_path)
    if not rows:
        return rows
    atomic.write_text(run_dir / CURVE_CSV, curve_csv(rows))
    steps = [row["step"] for row in rows]
    series = [Series("NME (test)", steps, [row["nme"] for row in rows])]
    if all("nme_mean_shape" in row for row in rows):
        series.append(Series("floor: mean shape", steps, [row["nme_mean_shape"] for row in rows],
                             dashed=True, markers=False))
    line_chart(series, run_dir / CURVE_FIGURE, title=title, xlabel="training step", ylabel="NME (%)")
    return rows
