"""The prepared dataset cache: decode, crop and resize once, then memory-map.

Layout, under ``$LMBENCH_CACHE`` (default ``~/.cache/lmbench``)::

    datasets/<name>/<key>/index.json          sources, counts, protocol, fingerprint, skipped
    datasets/<name>/<key>/<split>_images.npy  uint8 [N, S, S, 3]
    datasets/<name>/<key>/<split>_points.npy  float32 [N, P, 2] (annotated splits)

``key`` hashes what the user asked for (dataset, data root, options, protocol, size); the
``fingerprint`` in index.json hashes what is on disk (every source path with its size and
mtime, the parsed points, what was skipped) plus the same settings. When the fingerprint of
the current sources differs, the cache is rebuilt. A build writes into a temporary
directory beside the final one and renames it at the end, so a failed or interrupted
build leaves nothing half-written.

Builders made by :func:`make_builder` return :class:`~lmbench.data.ImageSplit` objects
backed by the memory-mapped ``.npy`` files, building the cache on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from lmbench import atomic, preprocess
from lmbench.data import SPLITS, DatasetSplits, ImageSplit
from lmbench.hookspecs import hookimpl
from lmbench.sources import DataError, Listing, Problems, Record
from lmbench.weights import cache_dir

FORMAT_VERSION = 1
INDEX = "index.json"
CHUNK = 64
MAX_LISTED_ERRORS = 10

# Options every cached dataset accepts (besides its own): see make_builder.
COMMON_OPTIONS = {"protocol": None, "skip_bad": False, "workers": None, "rebuild": False, "limit": None,
                  "annotated_only": False, "progress": True}
# Options that change how, not what, is built: not part of the cache key.
_NOT_KEYED = ("skip_bad", "workers", "rebuild", "progress")


def datasets_cache() -> Path:
    return cache_dir() / "datasets"


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# -- hashing -------------------------------------------------------------------------------
def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(name: str, root: Path, settings: dict) -> str:
    return _digest({"v": FORMAT_VERSION, "dataset": name, "root": str(Path(root).resolve()), **settings})[:16]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def fingerprint(listing: Listing, root: Path, settings: dict, skipped: list[dict]) -> str:
    """sha256 over the sources (path, size, mtime), their points, what was skipped and the settings."""
    digest = hashlib.sha256(json.dumps({"v": FORMAT_VERSION, **settings}, sort_keys=True, default=str).encode())
    for split in SPLITS:
        digest.update(f"\0split {split}\0".encode())
        for record in listing.splits[split]:
            stat = record.path.stat()
            digest.update(f"{_relative(record.path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{record.frame}\0".encode())
            if record.points is not None:
                digest.update(np.ascontiguousarray(record.points, dtype=np.float64).tobytes())
    digest.update(json.dumps(skipped, sort_keys=True).encode())
    return digest.hexdigest()


# -- decoding ------------------------------------------------------------------------------
def decode_record(record: Record, protocol: preprocess.Protocol, size: int, box_points=None):
    """One record -> (uint8 [S,S,3], float32 [P,2] | None, [2,3] map from input pixels to the
    annotation frame's pixels). Raises DataError naming the source."""
    where = f"{record.where}: " if record.where else ""
    try:
        with Image.open(record.path) as image:
            image = image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{where}missing image {record.path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{where}corrupt image {record.path}: {error}") from None
    points = record.points
    to_frame = np.ones(2)  # image pixels -> annotation-frame pixels
    if record.frame is not None:
        height, width = record.frame
        to_frame = np.array([width / image.size[0], height / image.size[1]])
        if points is not None:
            points = np.asarray(points, np.float64) / to_frame
    try:
        pixels, mapped, box = preprocess.apply(protocol, image, points, size, box_points)
    except ValueError as error:
        raise DataError(f"{where}{record.path}: {error}") from None
    return pixels, mapped, preprocess.box_to_source(box, size) * to_frame[:, None]


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[speed]} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _decode_split(records, protocol, size, box_points, folder: Path, split: str, workers: int, progress) -> tuple:
    """Decode a split into ``folder/<split>_images.npy``; returns (points or None, to_original, [(row, error)])."""
    n = len(records)
    images = np.lib.format.open_memmap(folder / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, size, size, 3)) if n else None
    annotated = n > 0 and all(r.points is not None for r in records)
    points = np.zeros((n, len(records[0].points), 2), np.float32) if annotated else None
    to_original = np.zeros((n, 2, 3), np.float64)
    errors: list[tuple[int, str]] = []
    done = [0]
    lock = threading.Lock()
    task = progress.add_task(split, total=n, speed="-")
    start = time.perf_counter()

    def work(begin: int) -> None:
        for row in range(begin, min(begin + CHUNK, n)):
            try:
                image, mapped, to_original[row] = decode_record(records[row], protocol, size, box_points)
            except DataError as error:
                with lock:
                    errors.append((row, str(error)))
                continue
            images[row] = image
            if points is not None:
                points[row] = mapped
        with lock:
            done[0] += min(CHUNK, n - begin)
            speed = done[0] / max(time.perf_counter() - start, 1e-6)
            progress.update(task, completed=done[0], speed=f"{speed:.0f}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(0, n, CHUNK)))
    if images is not None:
        images.flush()
        del images
    return points, to_original, sorted(errors)


def _compact(folder: Path, split: str, keep: np.ndarray, points):
    """Drop the rows of a split that failed to decode (--skip-bad)."""
    source = np.load(folder / f"{split}_images.npy", mmap_mode="r")
    rows = np.nonzero(keep)[0]
    target = np.lib.format.open_memmap(folder / f"{split}_kept.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(rows),) + source.shape[1:])
    for start in range(0, len(rows), 1024):
        target[start:start + 1024] = source[rows[start:start + 1024]]
    target.flush()
    del source, target
    os.replace(folder / f"{split}_kept.npy", folder / f"{split}_images.npy")
    return None if points is None else points[keep]


def _split_signature(records: list[Record]) -> str:
    return _digest([(str(r.path), None if r.points is None else r.points.tolist(), r.frame) for r in records])


def build_cache(listing: Listing, root: Path, folder: Path, protocol, size: int, *, skip_bad: bool, workers: int,
                progress: bool, index: dict) -> dict:
    """Decode every split into ``folder`` (a fresh temporary directory) and write index.json."""
    if protocol.needs_points:
        for split, records in listing.splits.items():
            unannotated = [r for r in records if r.points is None]
            if unannotated:
                raise DataError(f"protocol {protocol.name!r} needs landmarks for every image, but split {split!r} "
                                f"has {len(unannotated)} without (e.g. {unannotated[0].where or unannotated[0].path}); "
                                "choose another --protocol or leave the unannotated images out")
    splits, counts, sources, skipped = {}, {}, {}, []
    seen: dict[str, str] = {}
    with _progress(progress) as bar:
        for split in SPLITS:
            records = listing.splits[split]
            signature = _split_signature(records)
            if signature in seen:  # e.g. train == reg_train: stored once
                splits[split] = {"same_as": seen[signature]}
                counts[split] = counts[seen[signature]]
                continue
            seen[signature] = split
            points, to_original, errors = _decode_split(records, protocol, size, listing.box_points, folder, split,
                                                        workers, bar)
            if errors and not skip_bad:
                listed = "\n  ".join(message for _, message in errors[:MAX_LISTED_ERRORS])
                more = f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
                raise DataError(f"{len(errors)} bad image(s) in split {split!r}:\n  {listed}{more}\n"
                                "(pass --skip-bad, or the dataset option skip_bad=true, to skip and record them)")
            keep = np.ones(len(records), bool)
            for row, message in errors:
                keep[row] = False
                skipped.append({"split": split, "where": records[row].where or str(records[row].path), "problem": message})
            to_original = to_original[keep]
            if errors and keep.any():
                points = _compact(folder, split, keep, points)
            elif errors:
                (folder / f"{split}_images.npy").unlink()
            kept = [r for r, k in zip(records, keep) if k]
            entry = {"images": f"{split}_images.npy" if kept else None, "points": None, "to_original": None}
            if points is not None and kept:
                np.save(folder / f"{split}_points.npy", points)
                entry["points"] = f"{split}_points.npy"
            if kept:
                np.save(folder / f"{split}_to_original.npy", to_original)
                entry["to_original"] = f"{split}_to_original.npy"
            splits[split], counts[split] = entry, len(kept)
            sources[split] = [_relative(r.path, root) for r in kept]
    index.update(splits=splits, counts=counts, decode_skipped=skipped, sources=sources)
    index["skipped"] = index["listing_skipped"] + skipped
    index["n_skipped"] = len(index["skipped"])
    atomic.write_json(folder / INDEX, index)
    return index


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build into place, replacing a stale cache."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_index(folder: Path) -> dict | None:
    try:
        return atomic.read_json(folder / INDEX)
    except (FileNotFoundError, ValueError):
        return None


def load_splits(folder: Path, index: dict) -> dict[str, ImageSplit]:
    """ImageSplits backed by the memory-mapped arrays of a finished cache."""
    size = index["image_size"]
    out: dict[str, ImageSplit] = {}
    for split in SPLITS:
        entry = index["splits"][split]
        if "same_as" in entry:
            out[split] = out[entry["same_as"]]
            continue
        if entry["images"] is None:
            out[split] = ImageSplit(np.zeros((0, size, size, 3), np.uint8), None, [])
            continue
        images = np.load(folder / entry["images"], mmap_mode="r")
        points = np.load(folder / entry["points"]) if entry["points"] else None
        to_original = np.load(folder / entry["to_original"]) if entry.get("to_original") else None  # older caches: none
        out[split] = ImageSplit(images, points, index["sources"][split], to_original)
    return out


def prepare(name: str, root: Path, listing: Listing, listing_skipped: list[dict], protocol: preprocess.Protocol,
            image_size: int, settings: dict, *, skip_bad: bool = False, workers: int | None = None,
            rebuild: bool = False, progress: bool = True) -> tuple[Path, dict, bool]:
    """Find or build the cache for ``listing``; returns (folder, index, built)."""
    root = Path(root)
    folder = datasets_cache() / name / cache_key(name, root, settings)
    fp = fingerprint(listing, root, settings, listing_skipped)
    index = read_index(folder)
    if index is not None and index.get("fingerprint") == fp and not rebuild:
        if index.get("n_skipped") and not skip_bad:
            warnings.warn(f"dataset {name!r}: the cache {folder} was prepared with --skip-bad and leaves out "
                          f"{index['n_skipped']} bad input(s) (listed in its {INDEX})", stacklevel=2)
        return folder, index, False
    if listing_skipped and not skip_bad:
        first = listing_skipped[0]
        raise DataError(f"{first['where']}: {first['problem']} ({len(listing_skipped)} bad input(s) in all; pass "
                        "--skip-bad, or the dataset option skip_bad=true, to skip and record them)")
    if index is not None and index.get("fingerprint") != fp:
        warnings.warn(f"dataset {name!r}: the sources or settings changed since {folder} was built "
                      "(fingerprint mismatch); rebuilding", stacklevel=2)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        start = time.perf_counter()
        index = {
            "format_version": FORMAT_VERSION, "dataset": name, "root": str(root.resolve()), "key": folder.name,
            "fingerprint": fp, "image_size": image_size, "protocol": protocol.record(), "settings": settings,
            "schema": {"names": list(listing.schema.names), "eye_indices": list(listing.schema.eye_indices)},
            "listing_info": listing.info, "skip_bad": skip_bad, "listing_skipped": listing_skipped,
        }
        index = build_cache(listing, root, tmp, protocol, image_size, skip_bad=skip_bad,
                            workers=workers or default_workers(), progress=progress, index=index)
        index["build_seconds"] = round(time.perf_counter() - start, 2)
        atomic.write_json(tmp / INDEX, index)
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, index, True


# -- builders ------------------------------------------------------------------------------
Lister = Callable[..., Listing]


def make_builder(name: str, list_sources: Lister, *, default_protocol: str, options: dict | None = None,
                 cache_name: str | None = None):
    """A dataset builder ``(root, image_size, seed, **options) -> DatasetSplits`` over the cache.

    ``list_sources(root, problems, **options)`` returns the dataset's :class:`Listing`;
    ``options`` are its own options with their defaults. Every builder also accepts
    :data:`COMMON_OPTIONS`: ``protocol`` (default ``default_protocol``), ``skip_bad``,
    ``workers``, ``rebuild``, ``limit`` (keep the first N images of each split), ``annotated_only``
    (leave out images without landmarks, e.g. for a ground-truth-box crop) and ``progress``.
    ``cache_name`` lets a second registered name share a dataset's cache (``mafl`` and ``celeba``).
    """
    own = dict(options or {})

    def build(root=None, image_size: int = 64, seed: int = 0, **kwargs) -> DatasetSplits:
        unknown = set(kwargs) - set(COMMON_OPTIONS) - set(own)
        if unknown:
            valid = ", ".join(sorted(set(COMMON_OPTIONS) | set(own)))
            raise ValueError(f"dataset {name!r}: unknown option(s) {', '.join(sorted(unknown))}; valid: {valid}")
        if root is None:
            raise DataError(f"dataset {name!r} needs a data root (--data-root or $LMBENCH_DATA/{name})")
        common = {key: kwargs.get(key, default) for key, default in COMMON_OPTIONS.items()}
        chosen = {key: kwargs.get(key, default) for key, default in own.items()}
        protocol = preprocess.parse_protocol(common["protocol"] or default_protocol)
        if protocol.leaks_test_annotations:
            warnings.warn(f"dataset {name!r}: protocol {protocol.name!r} crops every image, test images included, "
                          "around its own ground-truth landmarks (leaks test annotations into the input)", stacklevel=2)
        problems = Problems(skip_bad=True)  # collect everything; prepare() decides whether to fail
        listing = list_sources(Path(root), problems, **chosen)
        if common["limit"] is not None:
            listing.splits = {split: records[: int(common["limit"])] for split, records in listing.splits.items()}
        settings = {"options": chosen, "limit": common["limit"], "protocol": str(protocol), "image_size": int(image_size)}
        if common["annotated_only"]:
            listing.splits = {split: [r for r in records if r.points is not None]
                              for split, records in listing.splits.items()}
            settings["annotated_only"] = True  # keyed only when set, so existing caches keep their keys
        folder, index, _ = prepare(cache_name or name, Path(root), listing, problems.skipped, protocol, int(image_size), settings,
                                   skip_bad=bool(common["skip_bad"]), workers=common["workers"],
                                   rebuild=bool(common["rebuild"]), progress=bool(common["progress"]))
        splits = load_splits(folder, index)
        info = {
            "dataset": name, "root": index["root"], "image_size": index["image_size"], "options": chosen,
            "limit": common["limit"], "protocol": index["protocol"], "cache": str(folder),
            "fingerprint": index["fingerprint"], "counts": index["counts"], "n_skipped": index["n_skipped"],
            **listing.info,
        }
        return DatasetSplits(name, listing.schema, splits["train"], splits["reg_train"], splits["test"], info)

    build.dataset_options = {**COMMON_OPTIONS, **own}
    return build


def cached_dataset(name: str, description: str, list_sources: Lister, *, layout: str,
                   required: list[tuple[str, ...]], default_protocol: str, options: dict | None = None,
                   annotated: bool = True, cache_name: str | None = None, default_root: str | None = None,
                   present: Callable[[Path], bool] | None = None):
    """A :class:`~lmbench.registry.DatasetSpec` for an on-disk dataset read through the cache.

    ``required`` lists the key files, each as alternative paths relative to the root (for
    ``is_present``); the data is looked for in --data-root, ``$LMBENCH_DATA/<name>``, then
    ``default_root`` (``~/data/<name>`` unless given); a dataset registered under a second name
    (``cache_name``) shares the first one's folders and cache. ``present`` replaces the file check.
    """
    from lmbench.registry import DatasetSpec
    from lmbench.sources import find_file

    def is_present(root: Path) -> bool:
        return all(find_file(Path(root), alternatives) is not None for alternatives in required)

    builder = make_builder(name, list_sources, default_protocol=default_protocol, options=options,
                           cache_name=cache_name)
    return DatasetSpec(name, description, builder, layout=layout, is_present=present or is_present,
                       default_root=default_root or f"~/data/{cache_name or name}", annotated=annotated,
                       data_dir=cache_name,
                       extra={"default_protocol": default_protocol, "options": builder.dataset_options})



# -- data-loading benchmark ----------------------------------------------------------------
def bench_batches(split: ImageSplit, batch_sizes=(16, 32), seconds: float = 2.0, device: str = "cpu",
                  seed: int = 0) -> dict[int, float]:
    """Images/s of ``split.batch`` (the trainer's path) for random batches, per batch size."""
    import torch

    if len(split) == 0:
        raise ValueError("cannot benchmark an empty split")
    rng = np.random.default_rng(seed)
    results = {}
    for batch_size in batch_sizes:
        split.batch(rng.integers(0, len(split), batch_size), device)  # warm up
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            batch = split.batch(rng.integers(0, len(split), batch_size), device)
            count += batch.shape[0]
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        results[batch_size] = count / (time.perf_counter() - start)
    return results


# -- commands ------------------------------------------------------------------------------
def _option(text: str) -> tuple[str, object]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise ValueError(f"--option expects KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def build_named(name: str, data_root, image_size: int, options: dict) -> DatasetSplits:
    """Build a registered dataset for a command; an explicit --data-root lets the adapter say what is missing."""
    from lmbench import registry

    spec = registry.get_dataset(name)
    if spec.embedded:
        return spec.builder(root=None, image_size=image_size, seed=0, **options)
    root = spec.find_root(data_root)
    if root is None and data_root is not None and Path(data_root).is_dir():
        root = Path(data_root)
    if root is None:
        looked = ", ".join(str(r) for r in spec.candidate_roots(data_root)) or "(nowhere: pass --data-root)"
        raise DataError(f"dataset {name!r}: data not found; looked in {looked}. Expected layout: {spec.layout}")
    return spec.builder(root=root, image_size=image_size, seed=0, **options)


def _command_options(protocol, skip_bad, workers, pairs) -> dict:
    options = dict(_option(pair) for pair in pairs)
    if protocol:
        options["protocol"] = protocol
    if skip_bad:
        options["skip_bad"] = True
    if workers:
        options["workers"] = workers
    return options


def _commands():
    import click
    from rich.console import Console
    from rich.table import Table

    out = Console()
    common = [
        click.argument("name"),
        click.option("--data-root", type=click.Path(file_okay=False), help="Where the dataset's files are."),
        click.option("--image-size", type=click.IntRange(16, 1024), default=64, show_default=True),
        click.option("--protocol", help="Preprocessing protocol, e.g. resize, center_crop:fraction=0.8, gt_box "
                                        "(default: the dataset's own; see lmbench.preprocess)."),
        click.option("--option", "pairs", multiple=True, metavar="KEY=VALUE",
                     help="A dataset option, e.g. --option points=5 (repeatable)."),
    ]

    def with_common(function):
        for decorator in reversed(common):
            function = decorator(function)
        return function

    @click.command("prepare")
    @with_common
    @click.option("--skip-bad", is_flag=True, help="Skip (and record in index.json) missing/corrupt images and malformed lines.")
    @click.option("--workers", type=click.IntRange(1, 64), help="Decoding threads.  [default: min(8, CPUs)]")
    @click.option("--rebuild", is_flag=True, help="Rebuild even if the cache is up to date.")
    def prepare_command(name, data_root, image_size, protocol, pairs, skip_bad, workers, rebuild) -> None:
        """Decode, crop and resize a dataset once into lmbench's memory-mapped cache."""
        options = _command_options(protocol, skip_bad, workers, pairs)
        if rebuild:
            options["rebuild"] = True
        start = time.perf_counter()
        data = build_named(name, data_root, image_size, options)
        table = Table(title=f"{name}: prepared in {time.perf_counter() - start:.1f}s")
        for column in ("split", "images", "annotated", "size"):
            table.add_column(column)
        for split in SPLITS:
            part = data.split(split)
            table.add_row(split, str(len(part)), "yes" if part.points is not None else "no",
                          "x".join(map(str, part.image_size)))
        out.print(table)
        info = data.info
        if "cache" in info:
            out.print(f"protocol {info['protocol']['name']} {info['protocol']['params']}"
                      f"{'  [red](leaks test annotations)[/]' if info['protocol']['leaks_test_annotations'] else ''}\n"
                      f"cache {info['cache']}\nfingerprint {info['fingerprint']}\nskipped {info['n_skipped']} bad input(s)")

    @click.command("bench-data")
    @with_common
    @click.option("--split", type=click.Choice(list(SPLITS)), default="train", show_default=True)
    @click.option("--batch-size", "batch_sizes", type=click.IntRange(1), multiple=True, default=(16, 32), show_default=True)
    @click.option("--seconds", type=click.FloatRange(0.1), default=2.0, show_default=True, help="Time per batch size.")
    @click.option("--device", default="cpu", show_default=True)
    @click.option("--threads", type=click.IntRange(0), default=0, help="torch CPU threads (0: torch's default, as the trainer).")
    def bench_command(name, data_root, image_size, protocol, pairs, split, batch_sizes, seconds, device, threads) -> None:
        """Images/s of random-batch assembly from the prepared cache (the trainer's ImageSplit.batch path)."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        data = build_named(name, data_root, image_size, _command_options(protocol, False, None, pairs))
        part = data.split(split)
        results = bench_batches(part, batch_sizes, seconds, device)
        table = Table(title=f"{name} {split}: {len(part)} images {part.image_size[0]}x{part.image_size[1]}, "
                            f"device {device}, {torch.get_num_threads()} torch thread(s)")
        table.add_column("batch size")
        table.add_column("images/s", justify="right")
        for batch_size, speed in results.items():
            table.add_row(str(batch_size), f"{speed:,.0f}")
        out.print(table)

    return prepare_command, bench_command


@hookimpl
def register_commands(cli):
    for command in _commands():
        cli.add_command(command)
