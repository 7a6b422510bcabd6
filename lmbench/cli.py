"""The ``lmbench`` command line."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from lmbench import registry
from lmbench.protocols import get_protocol, protocol_names

PROTOCOL_NAMES = protocol_names()

console = Console(stderr=True)
out = Console()


class LmbenchGroup(click.Group):
    """Turns lmbench's expected failures into a one-line error and exit status 1."""

    def invoke(self, ctx):
        from lmbench.runner import RunError
        from lmbench.train import NonFiniteError
        from lmbench.weights import WeightsUnavailable

        try:
            return super().invoke(ctx)
        except (RunError, NonFiniteError, WeightsUnavailable, registry.PluginConflict, ValueError, OSError) as error:
            if os.environ.get("LMBENCH_DEBUG"):
                raise
            console.print(f"[bold red]Error:[/] {error}", highlight=False)
            sys.exit(1)


@click.group(cls=LmbenchGroup)
@click.version_option(package_name="lmbench")
def cli() -> None:
    """lmbench: unsupervised landmark discovery methods under one trainer and one evaluator."""
    warnings.simplefilter("default")


def method_name(ctx, param, value):
    if value is None:
        return value
    try:
        return registry.get_method(value).name
    except registry.UnknownName as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


def dataset_name(ctx, param, value):
    if value is None:
        return value
    try:
        return registry.get_dataset(value).name
    except registry.UnknownName as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


@cli.command("methods")
def list_methods() -> None:
    """List the registered methods."""
    table = Table(title="lmbench methods")
    for column in ("name", "description", "plugin"):
        table.add_column(column)
    for spec in registry.methods().values():
        table.add_row(spec.name, spec.description, spec.plugin)
    out.print(table)


@cli.group("datasets", invoke_without_command=True)
@click.option("--data-root", type=click.Path(file_okay=False), help="Look for every dataset here.")
@click.pass_context
def list_datasets(ctx, data_root) -> None:
    """List the registered datasets, whether their data is found, and where lmbench looks."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="lmbench datasets")
    for column in ("name", "description", "status", "looks in", "expected layout"):
        table.add_column(column, overflow="fold")
    for spec in registry.datasets().values():
        if spec.embedded:
            status, where = "[green]embedded[/]", "(built in: nothing to download)"
        else:
            root = spec.find_root(data_root)
            status = f"[green]found[/] {root}" if root else "[red]missing[/]"
            where = "\n".join(str(r) for r in spec.candidate_roots(data_root)) or "--data-root"
        table.add_row(spec.name, spec.description, status, where, spec.layout)
    out.print(table)


@list_datasets.command("show")
@click.argument("name", callback=dataset_name)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@click.option("--split", type=click.Choice(["train", "reg_train", "test"]), default="test", show_default=True)
@click.option("--count", type=click.IntRange(1, 256), default=32, show_default=True)
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--image-size", type=click.IntRange(16, 1024), default=64, show_default=True)
def show_dataset(name, out_path, split, count, data_root, image_size) -> None:
    """Draw a grid of samples with their ground-truth points."""
    from lmbench.config import RunConfig
    from lmbench.runner import build_dataset
    from lmbench.viz import sample_grid

    config = RunConfig(dataset=name, data_root=data_root, image_size=image_size)
    data = build_dataset(config).split(split)
    n = min(count, len(data))
    sample_grid(data.images[:n], None if data.points is None else data.points[:n], out_path)
    out.print(f"wrote {out_path} ({n} {split} samples of {name})")


def _progress_callback(total: int, start: int, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} img/s"),
        TextColumn("{task.fields[nme]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task(description, total=total, completed=start, loss="-", speed="-", nme="")

    def on_step(step: int, record: dict) -> None:
        fields = {"loss": f"{record['loss']:.4f}"}
        if "nme" in record:  # a learning-curve probe (--eval-every)
            fields["nme"] = f"NME {record['nme']:.2f} % at step {step}"
        if "images_per_second" in record:
            fields["speed"] = f"{record['images_per_second']:.1f}"
            if not console.is_terminal:  # a log file gets one plain line per logged step
                probed = f" NME {record['nme']:.2f} %" if "nme" in record else ""
                console.print(f"step {step}/{total} loss {fields['loss']} {fields['speed']} img/s{probed}", highlight=False)
        progress.update(task, completed=step, **fields)

    return progress, on_step


@cli.command("run")
@click.option("--method", callback=method_name,
              help="A registered method (see `lmbench methods`); with --resume, the saved run's.")
@click.option("--K", "K", type=click.IntRange(1, 512), default=10, show_default=True, help="Number of landmarks to discover.")
@click.option("--dataset", default="synthetic", show_default=True, callback=dataset_name, help="A registered dataset.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where the dataset's files are.")
@click.option("--steps", type=click.IntRange(1), help="Training steps.  [default: 1000; zhang: 1200; baseline: 500; inter_subject: 420; cycle: 275; inter_intra: 235]")
@click.option("--batch-size", type=click.IntRange(1), help="Images per step.  [default: 16]")
@click.option("--image-size", type=click.IntRange(16, 1024), help="Input size in pixels.  [default: 64]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--perceptual", type=click.Choice(["vgg16", "alexnet", "none"]), help="Perceptual-loss backbone.  [default: vgg16 to relu3_3; zhang: none]")
@click.option("--perceptual-weights", type=click.Path(dir_okay=False, exists=True), help="Backbone weights (.pth, torchvision layout).")
@click.option("--threads", type=click.IntRange(0), default=0, help="CPU threads (0: torch's default).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory.  [default: runs/<method>-K<K>-<dataset>-s<seed>-<time>]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--detector-init", type=click.Path(dir_okay=False, exists=True),
              help="Pretrained detector checkpoint (lmbench pretrain, or any run's checkpoint.pt).")
@click.option("--adapt", type=click.Choice(["incremental", "finetune", "scratch"]),
              help="How to use --detector-init.  [default: incremental with --detector-init, else scratch]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any setting of config.json, e.g. --set detector.channels=128 (repeatable).")
@click.option("--eval-every", type=click.IntRange(0), metavar="N",
              help="Score the test NME every N steps and at the end: curve.csv, curve.png (0: never; same training).  [default: 0]")
@click.option("--protocol", "protocol_name", type=click.Choice(PROTOCOL_NAMES, case_sensitive=False),
              help="Evaluation protocol preset (lmbench.protocols); --set protocol.KEY=... refines it.  [default: lmbench]")
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA (no effect on the CPU).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="NHWC networks and inputs.  [default: on for CUDA, off on the CPU]")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile each network (slow first steps).")
@click.option("--prefetch/--no-prefetch", default=True, show_default=True,
              help="Load the next batch on a background thread and CUDA stream (CUDA only).")
@click.option("--keep-freed-memory/--no-keep-freed-memory", default=True, show_default=True,
              help="CPU: keep freed memory for the next step instead of unmapping it (glibc; same numbers, faster).")
def run_command(method, K, dataset, data_root, steps, batch_size, image_size, seed, device, perceptual,
                perceptual_weights, threads, out_dir, resume, detector_init, adapt, overrides,
                amp, channels_last, compile_, prefetch, keep_freed_memory, eval_every=None, protocol_name=None) -> None:
    """Train a method, evaluate it, and write a run directory.

    Under `torchrun --nproc_per_node=N -m lmbench run ...` the N processes share each
    batch of --batch-size images (DistributedDataParallel); rank 0 writes the run directory.
    """
    import json

    from lmbench.config import RunConfig, apply_override
    from lmbench.distributed import environment_rank
    from lmbench.runner import default_run_dir, run, saved_config
    from lmbench.train import TrainOptions

    if resume and out_dir is None:
        raise click.UsageError("--resume needs --out: the run directory to continue")
    if method is None:
        if not (resume and (Path(out_dir) / "config.json").exists()):
            raise click.UsageError("Missing option '--method'.")
        method = saved_config(Path(out_dir)).method
    config = RunConfig(method=method, K=K, dataset=dataset, data_root=data_root, seed=seed, device=device, threads=threads)
    for key, value in registry.get_method(method).config_defaults.items():  # the method's defaults first
        apply_override(config, f"{key}={json.dumps(value)}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("image_size", image_size)):
        if value is not None:
            setattr(config, name, value)
    if protocol_name:
        config.protocol = get_protocol(protocol_name)
    for assignment in overrides:
        try:
            apply_override(config, assignment)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--set") from None
    apply_perceptual_option(config, perceptual, perceptual_weights, overrides)
    if detector_init:
        config.detector.init = str(Path(detector_init).resolve())
    if adapt or detector_init:
        config.detector.adapt = adapt or "incremental"
    run_dir = Path(out_dir) if out_dir else default_run_dir(config)
    if resume and (run_dir / "config.json").exists():
        config = _resumed_config(run_dir, config, steps, overrides)
    if eval_every is not None:  # it changes no number, so --resume takes a new one too
        config.eval_every = eval_every
    options = TrainOptions(amp=amp, channels_last=channels_last, compile=compile_, prefetch=prefetch,
                           keep_freed_memory=keep_freed_memory)
    if environment_rank() != 0:  # another torchrun process: rank 0 reports
        run(config, run_dir, resume=resume, options=options)
        return
    console.print(f"[bold]lmbench run[/] {method} K={K} on {dataset} -> {run_dir}")
    progress, on_step = _progress_callback(config.steps, 0, f"{method} K={K}")
    with progress:
        metrics = run(config, run_dir, resume=resume, on_step=on_step, options=options)
    _print_metrics(metrics, run_dir)


def apply_perceptual_option(config, backbone: str | None, weights: str | None, overrides) -> None:
    """--perceptual picks a backbone with its own default layers (vgg16: the papers' four),
    unless --set perceptual.layers=... chose the layers; --perceptual-weights the file."""
    if backbone:
        config.perceptual.backbone = backbone
        if not any(a.strip().startswith("perceptual.layers=") for a in overrides):
            config.perceptual.layers = None
    if weights:
        config.perceptual.weights = str(weights)


def _resumed_config(run_dir: Path, requested, steps, overrides):
    """The saved run's settings, for --resume; --steps extends them and --set refines them.

    An option given explicitly on the command line that contradicts the saved run (another
    method, K, dataset or seed) is a usage error, never silently replaced.
    """
    from click.core import ParameterSource

    from lmbench.config import apply_override
    from lmbench.runner import saved_config

    config = saved_config(run_dir)
    context = click.get_current_context()
    explicit = {name for name in ("method", "K", "dataset", "seed")
                if context.get_parameter_source(name) is not ParameterSource.DEFAULT}
    clashes = [f"--{name} {getattr(requested, name)} (saved: {getattr(config, name)})" for name in sorted(explicit)
               if getattr(requested, name) != getattr(config, name)]
    if clashes:
        raise click.UsageError(f"--resume: {run_dir / 'config.json'} is a different run: {', '.join(clashes)}")
    if steps is not None:
        config.steps = steps
    for assignment in overrides:  # e.g. a lower optim.lr after the non-finite guard stopped a run
        try:
            apply_override(config, assignment)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--set") from None
    return config


def _print_metrics(metrics: dict, run_dir: Path) -> None:
    if metrics.get("evaluated") is False:
        out.print(f"trained {metrics.get('train_seconds', 0):.0f}s at {metrics.get('images_per_second', 0):.1f} img/s; "
                  f"not evaluated: {metrics['not_evaluated_because']}\nrun directory: {run_dir}", highlight=False)
        return
    out.print(
        f"[bold]NME[/] {metrics['nme']:.2f}%  (mean shape {metrics['nme_mean_shape']:.2f}%)  "
        f"train {metrics.get('train_seconds', 0):.0f}s at {metrics.get('images_per_second', 0):.1f} img/s\n"
        + (f"points: {metrics['wandering_points']} wandering, {metrics.get('border_points', 0)} on the border "
           f"(evaluation/<protocol>/points.csv)\n" if "wandering_points" in metrics else "")
        + f"run directory: {run_dir}"
    )


@cli.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--protocol", "protocols", multiple=True, type=click.Choice(PROTOCOL_NAMES, case_sensitive=False),
              help="Also score under this preset (repeatable); results go to nme_by_protocol in metrics.json.  "
                   "[default: the run's own protocol]")
@click.option("--floors/--no-floors", default=None,
              help="Score an untrained detector of the same architecture too.  [default: protocol.floors]")
@click.option("--dataset", callback=dataset_name, help="Score on this dataset instead of the run's own "
              "(e.g. a `folder` run on an annotated set).")
@click.option("--data-root", type=click.Path(file_okay=False, exists=True), help="Where that dataset's files are.")
def eval_command(run_dir, device, protocols, floors, dataset, data_root) -> None:
    """Re-evaluate a saved run from its checkpoint."""
    from lmbench.protocols import ALIASES
    from lmbench.runner import reevaluate

    names = [ALIASES.get(name.lower(), name.lower()) for name in protocols]
    metrics = reevaluate(Path(run_dir), device=device, protocols=names or None, floors=floors, dataset=dataset,
                         data_root=data_root)
    _print_metrics(metrics, Path(run_dir))
    for name, entry in metrics.get("nme_by_protocol", {}).items():
        if name in names:
            out.print(f"  {name}: NME {entry['nme']:.2f}%  backward {entry.get('nme_backward', float('nan')):.2f}%  "
                      f"(crop {entry.get('test_crop_used', '?')})", highlight=False)


@cli.command("report")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default="runs", show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default="reports/results.md", show_default=True)
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False), help="Long-format CSV.  [default: --out with .csv]")
@click.option("--published", type=click.Path(dir_okay=False, exists=True),
              help="The papers' numbers.  [default: reports/published.csv]")
@click.option("--plots/--no-plots", default=True, show_default=True, help="PNG plots in <--out folder>/plots.")
def report_command(runs_dir, out_file, csv_file, published, plots) -> None:
    """Tables like the papers' (Table I, Table II, ablations, floors) of the runs under --runs:
    markdown (printed and written to --out), CSV and PNG plots."""
    from lmbench.report import default_published, write_report

    if not Path(runs_dir).is_dir():
        raise click.BadParameter(f"{runs_dir} is not a directory", param_hint="--runs")
    files = write_report(runs_dir, out_file, csv_out=csv_file, published=published or default_published(), plots=plots)
    out.print(files.text, markup=False, highlight=False)
    console.print(f"wrote {files.markdown}, {files.csv}" + "".join(f", {p}" for ps in files.plots.values() for p in ps))


def _add_plugin_commands() -> None:
    from lmbench.plugins import get_plugin_manager

    get_plugin_manager().hook.register_commands(cli=cli)


def main() -> None:
    _add_plugin_commands()
    cli()
