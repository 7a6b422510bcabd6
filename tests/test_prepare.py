"""The prepared cache: bad inputs, --skip-bad, atomic builds, fingerprints, commands."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from dataset_fixtures import write_image, write_mtfl

from lmbench import prepare, preprocess
from lmbench.datasets import mtfl
from lmbench.sources import DataError


def build(root, **options):
    return mtfl.SPEC.builder(root=root, image_size=32, progress=False, **options)


def cache_entries():
    base = prepare.datasets_cache() / "mtfl"
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_missing_image_names_annotation_line(tmp_path, fresh_cache):
    root = write_mtfl(tmp_path / "d")
    (root / "lfw_5590" / "Person_0001.jpg").unlink()
    with pytest.raises(DataError, match=r"training.txt:2: missing image .*Person_0001.jpg"):
        build(root)
    assert cache_entries() == []


def test_corrupt_jpeg_fails_without_half_written_cache(tmp_path, fresh_cache):
    root = write_mtfl(tmp_path / "d")
    path = root / "AFLW" / "0001-image.jpg"
    path.write_bytes(path.read_bytes()[:60])  # truncated JPEG
    with pytest.raises(DataError, match=r"testing.txt:2: corrupt image .*0001-image.jpg"):
        build(root)
    assert cache_entries() == []  # no final directory, no temporary leftovers


def test_malformed_line_names_file_and_line(tmp_path, fresh_cache):
    root = write_mtfl(tmp_path / "d")
    with open(root / "training.txt", "a") as handle:
        handle.write("lfw_5590\\Person_0000.jpg 1 2 three 4 5 6 7 8 9 10 1 1 1 1\n")
        handle.write("lfw_5590\\Person_0000.jpg 1 2 3\n")
    with pytest.raises(DataError, match=r"training.txt:4: malformed line"):
        build(root)


def test_skip_bad_records_and_counts(tmp_path, fresh_cache):
    root = write_mtfl(tmp_path / "d")
    with open(root / "training.txt", "a") as handle:
        handle.write("lfw_5590\\Person_0000.jpg 1 2 3\n")
    path = root / "AFLW" / "0001-image.jpg"
    path.write_bytes(path.read_bytes()[:60])
    data = build(root, skip_bad=True)
    assert (len(data.reg_train), len(data.test)) == (3, 1) and data.info["n_skipped"] == 2
    index = prepare.read_index(prepare.datasets_cache() / "mtfl" / cache_entries()[0])
    wheres = sorted(entry["where"].rsplit("/", 1)[-1] for entry in index["skipped"])
    assert wheres == ["testing.txt:2", "training.txt:4"]
    assert index["counts"]["test"] == 1 and index["sources"]["test"] == ["AFLW/0000-image.jpg"]
    # The prepared cache is then used without --skip-bad (with a warning), not rebuilt or refused.
    with pytest.warns(UserWarning, match="prepared with --skip-bad"):
        again = build(root)
    assert again.info["fingerprint"] == data.info["fingerprint"]


def test_fingerprint_detects_changed_sources_and_protocol(tmp_path, fresh_cache):
    root = write_mtfl(tmp_path / "d")
    first = build(root)
    assert build(root).info["fingerprint"] == first.info["fingerprint"]  # reused
    image = root / "AFLW" / "0000-image.jpg"
    write_image(image, colour=(250, 10, 10))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match="fingerprint mismatch"):
        second = build(root)
    assert second.info["fingerprint"] != first.info["fingerprint"]
    assert second.info["cache"] == first.info["cache"]  # rebuilt in place
    assert second.test.images[0, ..., 0].mean() > 200
    assert len(cache_entries()) == 1
    other = build(root, protocol="center_crop:fraction=0.5")
    assert other.info["cache"] != first.info["cache"]
    with open(root / "testing.txt", "a") as handle:  # a changed source list
        handle.write("AFLW/0000-image.jpg 10 30 20 12 28 14 14 22 30 30 -1 -1 -1 -1\n")
    with pytest.warns(UserWarning, match="fingerprint mismatch"):
        assert len(build(root).test) == 3


def test_protocol_parsing():
    protocol = preprocess.parse_protocol("gt_box:margin=0.5")
    assert protocol.leaks_test_annotations and protocol.resolved() == {"margin": 0.5}
    assert str(preprocess.parse_protocol("center_crop")) == "center_crop:fraction=1.0"
    with pytest.raises(ValueError, match="unknown preprocessing protocol 'crop'"):
        preprocess.parse_protocol("crop")
    with pytest.raises(ValueError, match="unknown parameter"):
        preprocess.parse_protocol("resize:margin=2")
    with pytest.raises(ValueError, match="unknown option"):
        build(".", protocl="resize")


def test_prepare_and_bench_commands(tmp_path, fresh_cache, fresh_plugins):
    from lmbench.cli import _add_plugin_commands, cli

    _add_plugin_commands()
    root = write_mtfl(tmp_path / "d")
    (root / "lfw_5590" / "Person_0002.jpg").unlink()
    runner = CliRunner()
    failed = runner.invoke(cli, ["prepare", "mtfl", "--data-root", str(root), "--image-size", "32"])
    assert failed.exit_code == 1 and "training.txt:3: missing image" in " ".join(failed.output.split())
    done = runner.invoke(cli, ["prepare", "mtfl", "--data-root", str(root), "--image-size", "32", "--skip-bad"])
    assert done.exit_code == 0, done.output
    assert "skipped 1 bad input" in " ".join(done.output.split())
    bench = runner.invoke(cli, ["bench-data", "mtfl", "--data-root", str(root), "--image-size", "32",
                                "--seconds", "0.2", "--batch-size", "4"])
    assert bench.exit_code == 0, bench.output
    assert "images/s" in bench.output


def test_bench_batches_measures_the_trainer_path(tmp_path, fresh_cache):
    data = build(write_mtfl(tmp_path / "d"))
    speeds = prepare.bench_batches(data.train, batch_sizes=(2,), seconds=0.1)
    assert speeds[2] > 0
    batch = data.train.batch(np.array([0, 1]))
    assert batch.shape == (2, 3, 32, 32) and batch.dtype.is_floating_point and float(batch.max()) <= 1.0
