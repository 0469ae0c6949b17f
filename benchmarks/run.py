"""python -m benchmarks.run: how fast robustcnn is, side by side with what users would use instead.

    python -m benchmarks.run                        # the committed figures, ~80 min on 2 CPU cores
    python -m benchmarks.run --quick --out /tmp/b   # a smoke run of every section, seconds
    python -m benchmarks.run --only sweep,attack    # some sections (external: models from elsewhere)

Writes benchmarks.md, benchmarks.csv, accuracy.csv and machine.json to --out. Every figure is the
median of --repeats interleaved rounds, given as a ratio to a baseline measured in the same run (the
absolute seconds are there too, but on a shared CPU only the ratios mean much). Never a timed test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from robustcnn.cli import run_main
from robustcnn.config import BOOL, COUNT, INT, add_arguments, from_mapping, given_arguments, option
from robustcnn.errors import EXIT_OK, UsageError
from robustcnn.fileio import write_json

SECTIONS = (
    "sweep",
    "sweep-limit",
    "attack",
    "autoattack",
    "iterate",
    "adaptive",
    "external",
    "train",
    "robust-train",
    "ddp-train",
    "certify",
    "ray",
    "data",
    "report",
    "scale",
)
DEMO_MODELS = ("runs/demo-std", "runs/demo-adv")  # made by `make demo`


def _sections(value: object) -> tuple[str, ...]:
    names = tuple(part.strip() for part in str(value).split(",") if part.strip())
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise ValueError(f"choose from: {', '.join(SECTIONS)} (comma-separated)")
    return names


@dataclass(frozen=True)
class BenchConfig:
    out: str = option("benchmarks/results", "folder for benchmarks.md, benchmarks.csv, accuracy.csv, machine.json")
    repeats: int = option(3, "interleaved rounds per figure; each figure is their median", INT)
    attack_repeats: int = option(15, "rounds of the attack section (one call takes about a second)", INT)
    n: int = option(1000, "test images per model in the sweep section", INT)
    aa_n: int = option(100, "test images in the autoattack section (ART's AutoAttack: ~5 s per image on 2 cores)", INT)
    robust_n: int | None = option(None, "test images the robust-train section attacks; default all (1000)", INT)
    aa_baselines: bool = option(True, "time ART's and torchattacks' AutoAttack beside ours", flag=False)
    limit_aa: bool = option(True, "sweep-limit section: also the autoattack-grade suite (minutes: Square)", flag=False)
    limit_standard: bool = option(
        True, "sweep-limit section: also the standard suite on each model (~20 min)", flag=False
    )
    pgd_steps: int | None = option(
        None, "PGD steps in the sweep and attack sections (default 40, standard.toml); adaptive: 10 EOT, 40 BPDA", INT
    )
    adaptive_repeats: int = option(9, "rounds of the adaptive section (a round times its nine PGD calls once)", INT)
    adaptive_n: int = option(360, "digits test images the adaptive section's accuracy part attacks (all 360)", INT)
    attack_batch: int | None = option(None, "images in the single PGD call; default: the sweep's batch size", INT)
    train_size: int | None = option(None, "training images per epoch; default: all of the train split", INT)
    val_size: int = option(256, "held-out images validated each epoch (TrainConfig's default)", INT)
    report_models: int = option(10, "models in the synthetic report (10 for the figure)", INT)
    naive_sweep: bool = option(False, "also time robustcnn.sweep naive=True (a context row; slow)", BOOL)
    warmup: bool = option(True, "run each variant once untimed first (first-call costs)", flag=False)
    report_cli: bool = option(True, "also time one cold `python -m robustcnn.report`", flag=False)
    scale_smoke: bool = option(False, "scale section: smoke sizes (hundreds of images, 1-2 models, 30 cells)", BOOL)
    device: str = option("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    only: tuple[str, ...] = option(SECTIONS, f"sections to run, comma-separated: {', '.join(SECTIONS)}", _sections)
    seed: int = option(0, "seed of the test subset and the attacks' random starts", COUNT)

    @classmethod
    def from_dict(cls, data: dict) -> BenchConfig:
        return from_mapping(cls, data)


# A smoke run of every section: tiny data, 1 PGD step, one round, no warm-up. Its figures mean nothing.
QUICK = {
    "repeats": 1,
    "attack_repeats": 1,
    "adaptive_repeats": 1,
    "adaptive_n": 24,
    "n": 12,
    "pgd_steps": 1,
    "attack_batch": 8,
    "train_size": 64,
    "val_size": 16,
    "report_models": 2,
    "report_cli": False,
    "warmup": False,
    "aa_n": 6,
    "robust_n": 12,
    "aa_baselines": False,
    "limit_aa": False,
    "scale_smoke": True,
}


def run(models: list[str], config: BenchConfig) -> list[Path]:
    """Runs the chosen sections and writes the tables; returns the files written."""
    import torch

    from benchmarks.table import write_all
    from benchmarks.timing import OtherLoad, load_average, machine
    from robustcnn.console import say
    from robustcnn.devices import resolve_device
    from robustcnn.sweep.subjects import default_batch_size

    paths = _check_models(models, config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    header = machine(device)
    batch = default_batch_size(device)
    rows, accuracy, notes = [], [], _notes(config, device, batch)
    steps = config.pgd_steps or 40
    others = {}
    for section in config.only:
        say(f"benchmark section: {section}")
        with OtherLoad() as load:
            rows += _section(section, paths, config, device, batch, steps, accuracy)
        others[section] = load.cores
    header["load_after"] = load_average()
    header["repeats"] = config.repeats
    header["other_processes_cores"] = ", ".join(f"{k} {'?' if v is None else f'{v:.2f}'}" for k, v in others.items())
    notes.append(_load_note(others, header["cores"]))
    out = Path(config.out)
    written = write_all(out, rows, accuracy, header, notes)
    write_json(out / "machine.json", header)
    return [*written, out / "machine.json"]


def _section(section: str, paths: list[Path], config: BenchConfig, device, batch: int, steps: int, accuracy: list):
    """The rows of one section; the sweep section also fills `accuracy`."""
    if section == "sweep":
        rows, table = _sweep(paths, config, device, batch)
        accuracy.extend(table)
        return rows
    if section == "sweep-limit":
        from benchmarks import sweep_limit

        aa_n = config.aa_n if config.limit_aa else None
        standard = config.limit_standard
        return sweep_limit.measure(paths, config.n, aa_n, device, batch, config.repeats, config.seed, standard)
    if section == "attack":
        from benchmarks import attack_limit

        return attack_limit.measure(paths[-1], config.attack_batch or batch, steps, device, config.attack_repeats)
    if section == "autoattack":
        from benchmarks import autoattack_compare

        repeats = 1 if config.aa_baselines else config.repeats  # ART's AutoAttack alone takes minutes a round
        return autoattack_compare.measure(paths[-1], config.aa_n, device, repeats, config.aa_baselines, config.seed)
    if section == "iterate":
        from benchmarks import autoattack_compare

        return autoattack_compare.measure_iterates(paths, min(config.n, 500), device, config.seed)
    if section == "adaptive":
        from benchmarks import adaptive

        images = config.attack_batch or batch
        rows = adaptive.measure(images, config.pgd_steps, device, config.adaptive_repeats, config.seed)
        return rows + adaptive.accuracy_rows(config.adaptive_n, config.seed)
    if section == "external":
        from benchmarks import external_speed

        return external_speed.measure(paths[-1], config.attack_batch or batch, steps, device, config.attack_repeats)
    if section == "train":
        from benchmarks import train_speed

        settings = {"dataset": "mnist5k", "val_size": config.val_size}
        if config.train_size:
            settings["train_size"] = config.train_size
        return train_speed.measure(settings, device, config.repeats, config.warmup)
    if section == "robust-train":
        from benchmarks import robust_train

        settings = {"dataset": "mnist5k", "val_size": config.val_size}
        if config.train_size:
            settings.update(train_size=config.train_size, epochs=1, eps_warmup=0)  # the quick run's smoke test
        steps = robust_train.PGD_STEPS if config.pgd_steps is None else config.pgd_steps
        return robust_train.measure(settings, device, config.robust_n, steps)
    if section == "ddp-train":
        from benchmarks import ddp_speed

        settings = {"val_size": config.val_size, "train_size": config.train_size}
        return ddp_speed.measure(settings, config.pgd_steps or 10, config.repeats)
    if section == "certify":
        from benchmarks import certify_speed

        crown_images = min(certify_speed.CROWN_IMAGES, max(1, config.n // 4))  # the quick run: a few
        return certify_speed.measure(paths[-1], device, config.repeats, config.train_size, crown_images)
    if section == "ray":
        from benchmarks import ray_sweep

        return ray_sweep.measure(paths, config.n, config.repeats, steps, config.seed)
    if section == "data":
        from benchmarks import data_speed

        return data_speed.measure(config.repeats)
    if section == "scale":
        from benchmarks import scale

        return scale.measure(config.scale_smoke, config.repeats, config.seed)
    return _report(config)


def _check_models(models: list[str], config: BenchConfig) -> list[Path]:
    """Fail fast: the sweep and attack sections need trained runs (`make demo` makes the default ones)."""
    if not {"sweep", "sweep-limit", "attack", "autoattack", "iterate", "external", "certify", "ray"} & set(config.only):
        return []
    from robustcnn.runs import load_run

    paths = [Path(m) for m in models or DEMO_MODELS]
    if not models and not all(path.is_dir() for path in paths):
        raise UsageError(f"the benchmark attacks the demo models {' and '.join(DEMO_MODELS)}: run `make demo` first")
    for path in paths:
        run = load_run(path)  # raises a UsageError naming the path when it is not a run
        if run.meta.get("status") not in ("finished", "stopped-early"):
            raise UsageError(f"run {str(path)!r} has status {run.meta.get('status')!r}; train it to the end first")
    return paths


def _sweep(paths: list[Path], config: BenchConfig, device, batch: int):
    from benchmarks import sweep_speed

    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        suite = sweep_speed.write_suite(Path(tmp), config.pgd_steps)
        job = sweep_speed.Job(tuple(paths), suite, config.n, device, batch, config.seed)
        return sweep_speed.measure(job, config.repeats, config.naive_sweep, config.warmup)


def _report(config: BenchConfig):
    from benchmarks import report_speed
    from benchmarks.table import Row

    result = report_speed.measure(config.repeats, config.report_models, config.report_cli)
    rows = [
        Row("report", f"report rendering, {result['sweep']} ({result['rows']} rows)", result["report_s_median"], "s",
            target="< 2", seconds=result["report_s_median"], repeats=result["repeats"],
            note="robustcnn.report(out) with imports done; benchmarks/report_speed.py"),
    ]  # fmt: skip
    if config.report_cli:
        rows.append(
            Row("report", "cold `python -m robustcnn.report` (imports included), same sweep", result["cli_s"], "s",
                seconds=result["cli_s"], repeats=1, note="context")
        )  # fmt: skip
    return rows


def _notes(config: BenchConfig, device, batch: int) -> list[str]:
    from benchmarks import ddp_speed

    cpu_only = device.type == "cpu"
    return [
        ("Figures are CPU-only: no GPU was used. " if cpu_only else f"Device: {device}. ")
        + "Ratios come from variants timed round by round in the same run; absolute seconds depend on load.",
        f"Each figure is the median of {config.repeats} interleaved round(s) ({config.attack_repeats} in the "
        "attack section, whose call is short); the order rotates every round.",
        f"Sweep section: the sweep runs with its default batch size ({batch} on this device) into a fresh "
        "temporary folder each round (no cached cells), report off, gallery on (its default).",
        "Accuracy: robustcnn's sweep is nested ('no adversarial example at any eps <= this eps'); each loop's "
        "'nested' column ANDs its per-example results over the eps up to this one, the like-for-like figure. "
        "Per-eps FGSM can exceed nested FGSM because one large signed step can miss where a smaller one hit.",
        "Reading the sweep rows: a speed-up is (work that nesting saves: the 'work' row) x (speed per gradient "
        "of each path). Per gradient, the sweep goes through ART's PGD, whose own per-step work (projection, "
        "clipping, checks) puts one call at the 'attack' row's multiple of bare forward + backward passes. "
        "The sweep holds each model in channels-last layout (robustcnn.devices.fast_layout) with frozen weights; "
        "the hand-written loops use robustcnn.load_model as a user would: the same layout, weights trainable.",
        "Sweep-limit section: the whole sweep against the work it cannot avoid - every input gradient and "
        "forward-only image it took, counted in an untimed run of the same sweep, times plain PyTorch's per-image "
        "time at a full batch on the sweep's own module, timed right before each cell. Attack = the attack and "
        "probe cells' seconds; wall = the whole in-process call (report off). The patch has no such limit (its "
        "cost is ART's image transforms), so the standard suite runs without it. The everyday sweep is FGSM + "
        "PGD-40 (Linf) over the quick suite's 6 eps with --probe 0; its start-up row runs it as a command: wall "
        "time less its cells' seconds (results.csv), less `import torch` timed inside that command, less the "
        'interpreter\'s start and exit around `python -c "import torch"` (its wall less its own import). '
        "On a GPU the same command measures there, at the GPU's batch size.",
        "Autoattack section: the official AutoAttack (github.com/fra31/auto-attack, version standard, FAB-T "
        "included; run from AUTOATTACK_PATH, a reference, not a dependency), ART's AutoAttack (its defaults) and "
        "torchattacks' AutoAttack (version standard) attack the sweep's own n test images at the dataset's eps, "
        "each once (ART's takes minutes); each figure is the accuracy it leaves.",
        "Training section: one epoch of a fresh run per method (eps_warmup 0), the training part timed apart "
        "from the per-epoch validation. The ideals count an attack step as one clean training step; an attack "
        "step is cheaper (no weight gradients, no optimiser step), so below 1x ideal means nothing is wasted.",
        "Ray section: whole `python -m robustcnn.sweep` commands, one process (torch's 2 threads) against Ray "
        "tasks with 1 core each on a 2-CPU cluster; the cells are the same, so the ratio is what Ray adds: connecting, "
        "the workers' own imports, shipping models and images, streaming cells back, and chains left running alone at "
        "the end. On a multi-GPU node the same chains spread over the GPUs (--gpus-per-task 1, or 0.25 for small "
        "models): a sweep of many models and attacks is expected to approach (GPUs / gpus-per-task) x one GPU, "
        "bounded by its longest chain (one attack's eps run in order); there, time `python -m robustcnn.sweep "
        "MODELS --suite standard --ray local --gpus-per-task 1` against the same command without --ray. The section's "
        "'other processes' load counts the Ray cluster's workers (not this process's children) as others.",
        "Robust-train section: each method trained once with its README command (10 epochs of mnist5k), its "
        "best.safetensors then attacked by PGD-40 (step 0.01) with 5 random restarts at eps 0.3 on the test "
        "images through ART with true labels: an attack none of the methods trained or validated with.",
        ddp_speed.NOTE,
        f"Adaptive section (benchmarks/adaptive.py, {config.adaptive_repeats} round(s), random seeded weights): PGD-S "
        "with EOT K on a random model against plain PGD-(S x K), the same forward + backward passes (counted), so "
        "the ratio is EOT's bookkeeping beyond its passes; plain PGD also does K times the step's own chores (sign, "
        "projection, clipping), so a ratio under 1 is those, not faster passes. BPDA: PGD through rounding by the "
        "torch function mode or by a hook on the quantising module, against plain PGD on the bare net, same passes.",
        "Scale section (benchmarks/scale.py): CPU figures on random seeded weights and synthetic uint8 3x32x32 npz "
        "test sets. Sweeps run as fresh `python -m robustcnn.sweep --no-report` processes, one round each: wall "
        "seconds include start-up; peak RSS is the child's own (VmHWM, benchmarks/peak_rss.py). The resume figure "
        "re-runs a sweep whose cells/ the sweep's own runner filled without attacking (checked: no cell computed).",
    ]


def _load_note(others: dict[str, float | None], cores: int | None) -> str:
    """Says whether other processes competed for the CPU while each section ran."""
    known = {k: v for k, v in others.items() if v is not None}
    if not known:
        return "Load: other processes' CPU use could not be measured on this system."
    each = ", ".join(f"{k} {v:.2f}" for k, v in known.items())
    verdict = (
        "the machine was quiet"
        if max(known.values()) < 0.1
        else "other processes competed for the CPU: absolute seconds are inflated, interleaved ratios less so"
    )
    return f"Load: cores kept busy by other processes, on average per section ({cores} cores): {each}; {verdict}."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", metavar="RUN_DIR", help=f"trained runs (default: {' '.join(DEMO_MODELS)})")
    add_arguments(p, BenchConfig)
    p.add_argument("--quick", action="store_true", help="tiny sizes and one round: checks the runner works")
    return p


def main(argv: list[str]) -> int:
    from robustcnn.console import say

    args = parser().parse_args(argv)
    given = given_arguments(args, BenchConfig)
    config = BenchConfig.from_dict({**(QUICK if args.quick else {}), **given})
    for path in run(args.models, config):
        say(f"wrote {path}")
    return EXIT_OK


def entry() -> None:
    sys.exit(run_main(main, name="benchmarks.run"))


if __name__ == "__main__":
    entry()
