import json

import numpy as np
import pandas as pd
import pytest

from lmbench import atomic
from lmbench.config import ProtocolConfig
from lmbench.evaluate import evaluate_points, metrics_record, write_evaluation
from lmbench.plots import Series, bar_chart, is_png, line_chart, nice_ticks
from lmbench.protocols import get_protocol
from lmbench.report import ReportWarning, collect_runs, default_published, load_published, write_report

NAMES = ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"]


def _make_run(root, name, method, seed, *, noise=2.0, protocols=("lmbench",), supervised=False, lr=1e-3):
    """A run directory written with the real evaluator on synthetic point sets (no training)."""
    rng = np.random.default_rng(seed)
    gt = rng.uniform(10, 50, size=(70, 5, 2))
    gt[:, 1] = gt[:, 0] + [12.0, 0.0]
    discovered = gt[:, [0, 1, 2, 4]] + rng.normal(0, noise, size=(70, 4, 2))
    results = {}
    for protocol_name in protocols:
        protocol = ProtocolConfig(sweep_sizes=(1, 5, 10), repeats=2) if protocol_name == "lmbench" else get_protocol(protocol_name)
        result = evaluate_points(discovered[:50], gt[:50], discovered[50:], gt[50:], protocol, (0, 1), image_size=(64, 64))
        result.update(protocol=vars(protocol) | {"sweep_sizes": list(protocol.sweep_sizes)}, landmark_names=NAMES,
                      test_crop_used="none", leaks_test_annotations=protocol.test_crop == "gt_box",
                      nme_untrained=result["nme_mean_shape"] * 0.9)
        results[protocol_name] = result
    run = root / name
    run.mkdir(parents=True)
    write_evaluation(run, results)
    metrics = {"method": method, "K": 4, "dataset": "synthetic", "seed": seed, "steps": 10, "train_seconds": 1.0,
               "images_per_second": 50.0, **metrics_record(results, "lmbench")}
    if supervised:
        metrics["supervised"] = True
    atomic.write_json(run / "metrics.json", metrics)
    # Nested records that differ between seeds and machines, as real config.json files have.
    atomic.write_json(run / "config.json", {
        "method": method, "seed": seed, "optim": {"lr": lr},
        "dataset_info": {"seed": seed, "render_version": 1},
        "environment": {"torch": f"2.{seed}.0"},
        "train_options": {"world_size": seed + 1},
    })
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _make_run(root, "base0", "baseline", 0, protocols=("lmbench", "sanchez"))
    _make_run(root, "base1", "baseline", 1, protocols=("lmbench", "sanchez"))
    _make_run(root, "ii0", "inter_intra", 0, noise=1.0)
    _make_run(root, "ii1", "inter_intra", 1, noise=1.0)
    _make_run(root, "ii_lr", "inter_intra", 2, noise=1.0, lr=1e-2)
    _make_run(root, "sup", "supervised_sam", 0, noise=0.5, supervised=True)
    return root


def test_broken_runs_are_skipped_with_a_warning_naming_the_file(runs):
    (runs / "corrupt").mkdir()
    (runs / "corrupt" / "metrics.json").write_text("{not json")
    (runs / "partial").mkdir()
    (runs / "partial" / "metrics.json").write_text(json.dumps({"method": "x", "K": 1}))
    (runs / "ii0" / "evaluation.json").write_text("[1, 2")
    with pytest.warns(ReportWarning) as caught:
        frame = collect_runs(runs)
    messages = " ".join(str(w.message) for w in caught)
    assert str(runs / "corrupt" / "metrics.json") in messages and "line 1" in messages
    assert str(runs / "partial" / "metrics.json") in messages and "missing dataset" in messages
    assert str(runs / "ii0" / "evaluation.json") in messages
    assert len(frame) == 6  # the run with a broken evaluation.json keeps its scalars
    assert frame.loc[frame.run.str.endswith("ii0"), "evaluation"].iloc[0] is None


def test_variants_come_from_the_settings_that_differ(runs):
    frame = collect_runs(runs)
    variants = dict(zip(frame.run.str.rsplit("/", n=1).str[-1], frame.variant))
    assert variants["ii_lr"] == "optim.lr=0.01" and variants["ii0"] == "optim.lr=0.001"
    assert variants["base0"] == ""  # both baseline runs share every setting but the seed


def test_report_tables_csv_and_plots(runs, tmp_path):
    out = tmp_path / "reports" / "results.md"
    files = write_report(runs, out, published=default_published())
    text = out.read_text()
    for section in ("## Table I", "## Table II", "## Ablations over seeds", "## Reference floors",
                    "## The same checkpoints under several protocols", "## All runs"):
        assert section in text
    assert "| baseline | 4 | synthetic |" in text  # the per-run table
    assert "supervised_sam (supervised, no regressor)" in text
    floors = text.split("## Reference floors")[1].split("\n## ")[0]
    assert "| inter_intra [optim.lr=0.01] |" in floors and "| inter_intra [optim.lr=0.001] |" in floors
    assert "*published:* Li et al. 2020: inter_intra (full) — protocol sanchez" in text
    side = next(line for line in text.splitlines() if line.startswith("| baseline | 4 | synthetic | "))
    assert side.count("±") == 2  # lmbench and sanchez side by side
    assert "sanchez (GT-box crop not applied: no crop step)" in text
    frame = pd.read_csv(files.csv, dtype={"n_fit": str})
    assert {"lmbench", "published: Li et al. 2020"} <= set(frame.source)
    ours = frame[(frame.source == "lmbench") & (frame.method == "baseline") & (frame.metric == "nme")]
    assert set(ours.protocol) == {"lmbench", "sanchez"} and set(ours.n_fit.fillna("")) >= {"", "1", "5", "10", "all"}
    pngs = [p for paths in files.plots.values() for p in paths]
    assert len(pngs) == 3 and all(is_png(p) for p in pngs)
    for png in pngs:
        assert f"(plots/{png.name})" in text


def test_seed_statistics_are_mean_and_sample_std(runs, tmp_path):
    frame = collect_runs(runs)
    base = frame[frame.method == "baseline"].nme
    text = write_report(runs, tmp_path / "r.md", plots=False).text
    assert f"{base.mean():.2f} ± {base.std(ddof=1):.2f} (2)" in text


def test_published_table_is_complete():
    table = load_published(default_published())
    assert set(table.columns) >= {"source", "citation", "method", "K", "dataset", "metric", "value", "protocol"}
    li_sweep = table[(table.source == "Li et al. 2020") & (table.n_fit != "")]
    assert list(li_sweep.value) == [9.03, 7.50, 7.09, 3.71, 3.23, 3.17, 3.09, 3.08]
    assert table[(table.method == "TCDCN (supervised)") & (table.dataset == "mafl")].value.item() == 7.95


def test_nice_ticks_and_plots(tmp_path):
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(2.3, 9.1) == [2, 4, 6, 8, 10]
    path = line_chart([Series("a", [1, 10, 100], [5.0, 3.0, 2.0], [0.5, 0.2, 0.1])], tmp_path / "l.png",
                      title="t", xlabel="x", ylabel="y", log_x=True)
    assert is_png(path)
    assert is_png(bar_chart(["a", "b"], {"m": [1.0, 2.0]}, tmp_path / "b.png", title="t", ylabel="y"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert not is_png(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="2 categories"):
        bar_chart(["a", "b"], {"m": [1.0]}, tmp_path / "c.png", title="t", ylabel="y")


def test_a_setting_only_some_runs_have_is_shown_as_unset(tmp_path):
    root = tmp_path / "runs"
    _make_run(root, "a", "baseline", 0)
    plain = _make_run(root, "b", "baseline", 1)
    config = json.loads((plain / "config.json").read_text())
    config["dataset_options"] = {"background": "plain"}
    atomic.write_json(plain / "config.json", config)
    frame = collect_runs(root)
    variants = dict(zip(frame.run.map(lambda p: p.split("/")[-1]), frame.variant))
    assert variants == {"a": "dataset_options.background=(unset)", "b": "dataset_options.background=plain"}


def test_the_legend_sits_below_the_chart(tmp_path):
    from PIL import Image

    series = [Series(f"run {i}", [1, 2, 3], [1.0 + i, 2.0, 3.0]) for i in range(3)]
    path = line_chart(series, tmp_path / "l.png", title="t", xlabel="x", ylabel="y", size=(400, 300))
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape == (300 + 3 * 18 + 12, 400)
    assert (pixels[300:] < 128).any()  # the legend's text and swatches are drawn there


def test_a_long_legend_label_widens_the_chart(tmp_path):
    from PIL import Image

    label = "baseline [" + ", ".join(f"setting.{i}=value" for i in range(12)) + "]"
    path = line_chart([Series(label, [1, 2], [1.0, 2.0])], tmp_path / "w.png", title="t", xlabel="x", ylabel="y",
                      size=(400, 300))
    with Image.open(path) as image:
        assert image.size[0] > 400
