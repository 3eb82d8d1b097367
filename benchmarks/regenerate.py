"""Regenerate the committed tables and figures under docs/, each with the one command that writes it.

Every file under ``docs/`` belongs to one target below. A target runs its command(s) (the scripts write into
the docs folder themselves; the study's files are copied there from its results folder) and every file it
writes names the command, the commit and the machine (``timm_xbn.utils.provenance``); a file left without that
record is an error. ``--tiny`` runs each command in its smoke mode (seconds to a minute; numbers meaningless),
for a check that the pipeline still works: use it with ``--out`` somewhere else than docs/.

Every step that computes runs in portable mode (``timm_xbn.utils.portable``: kernels pinned to AVX2, one
thread; the command gets ``--portable`` and the settings in its environment), so a committed number is the
same bits on any x86-64 machine with the same torch; ``--no-portable`` runs at the machine's native speed.
``--check`` writes into a scratch folder instead and compares with the committed files
(``benchmarks.regenerate_check``): identical numbers where both are portable, otherwise every number within
the committed interval's half-width and every verdict equal; it prints what moved and exits 1 if anything
failed.

    python -m benchmarks.regenerate --list                     # the targets, their files and commands
    python -m benchmarks.regenerate --only tta                 # docs/tta at this commit (~15 CPU-min)
    python -m benchmarks.regenerate --tiny -o /tmp/docs        # every target, tiny, into /tmp/docs
    python -m benchmarks.regenerate --check --only tta         # rerun docs/tta into a scratch folder, compare
    python -m benchmarks.regenerate --check --only tta --from /tmp/docs   # compare files made before
"""
import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from benchmarks.regenerate_check import check, report
from timm_xbn.commands.vocabulary import RENAMED, translate_argv
from timm_xbn.utils.files import write_text_atomic
from timm_xbn.utils.portable import portable_env
from timm_xbn.utils.provenance import provenance, read_provenance, stamp

ROOT = Path(__file__).resolve().parent.parent
STUDY_FIGURES = ("mlp_esm_vs_depth.png", "mlp_setup_one.png", "mlp_setup_two_errors.png", "resnet_adabn.png",
                 "resnet_esm_vs_depth.png", "resnet_robustness.png", "resnet_small_batch.png", "resnet_top1.png",
                 "tta_streams.png")
# the per-seed tables every claim is computed from (claims.csv records each effect's per-seed values too)
STUDY_TABLES = ("resnet_top1.csv", "resnet_robustness.csv", "resnet_esm.csv", "resnet_adabn.csv", "resnet_small_batch.csv",
                "tta.csv", "mlp_esm.csv", "mlp_history.csv")


def _shown(path: Path) -> Path:
    """``path`` relative to the repository root when inside it: the commands then read the same on every checkout."""
    try:
        return path.relative_to(ROOT)
    except ValueError:
        return path


@dataclass(frozen=True)
class Step:
    """One command. ``{out}`` is the docs folder, ``{work}`` a scratch folder for results that are not
    committed; ``tiny`` is added to the command in tiny mode. ``copies`` maps a file it writes under
    ``{work}`` to its docs file, ``stdout`` names the docs file that receives its output; both are stamped,
    with the kernels of a child started like the command (it ran at ``threads`` torch threads). ``portable``:
    the command takes ``--portable`` (one that runs several threads, or computes nothing, does not)."""

    command: str
    tiny: str
    copies: Dict[str, str] = field(default_factory=dict)
    stdout: Optional[str] = None
    portable: bool = True
    threads: int = 1

    def argv(self, out: Path, work: Path, tiny: bool, portable: bool = False) -> List[str]:
        """The command line, run from the repository root (folders inside it are given relative to it)."""
        argv = shlex.split(self.command.format(out=_shown(out), work=_shown(work)))
        if portable and self.portable:
            argv.append("--portable")
        if tiny:
            argv += shlex.split(self.tiny)
        return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


@dataclass(frozen=True)
class Target:
    """Docs files (relative to docs/) and the steps that write them."""

    name: str
    files: Tuple[str, ...]
    steps: Tuple[Step, ...]
    note: str = ""


def _study(run: str, flags: str, summary: str, copies: Dict[str, str], threads: int = 1) -> Step:
    return Step(f"xbn-eval study {flags}-o {{work}}/{run}".replace("  ", " "), "--quick",
                {f"{run}/summary.txt": summary, **copies}, portable=threads == 1, threads=threads)


TARGETS: Dict[str, Target] = {t.name: t for t in (
    Target("tta", ("tta/tta_demo.json", "tta/tta_demo.md", "tta/tta_demo.png"),
           (Step("python benchmarks/tta_demo.py -o {out}/tta", "--tiny"),)),
    Target("calibration", ("calibration.md", "calibration.json"),
           (Step("python benchmarks/calibration.py --output {out}", "--tiny"),)),
    Target("study", ("study/summary.txt", "study/claims.csv", *(f"study/{f}" for f in STUDY_FIGURES + STUDY_TABLES)),
           (_study("study", "", "study/summary.txt",
                   {"study/claims.csv": "study/claims.csv",
                    **{f"study/{f}": f"study/{f}" for f in STUDY_FIGURES + STUDY_TABLES}}),),
           "90-120 min on 2 cores (about 12,000 CPU-s); resumes from {work}/study"),
    Target("study_2threads", ("study/summary_2threads.txt",),
           (_study("study_2threads", "--jobs 1 --threads 2 ", "study/summary_2threads.txt", {}, threads=2),),
           "2 threads: native kernels (portable mode runs one thread)"),
    Target("study_compare", ("study/compare_1_vs_2_threads.txt",),
           (Step("xbn-eval study-compare {work}/study {work}/study_2threads", "", stdout="study/compare_1_vs_2_threads.txt",
                 portable=False),),
           "reads the results of the study and study_2threads targets (same --work)"),
)}


# Hand-written reference pages (moved out of the README): prose that quotes the tables above, and
# small tables each of which names the script that printed it. No target writes them.
PAGES = ("study.md", "models.md", "surgery.md", "commands.md", "tta.md", "testing.md")


def child_kernels(env: Optional[Dict[str, str]], threads: int) -> dict:
    """``kernel_record`` of a fresh interpreter started with ``env``: what a step's command computed with."""
    code = f"import json; from timm_xbn.utils.portable import kernel_record; print(json.dumps(kernel_record({threads})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def run_target(target: Target, out: Path, work: Path, tiny: bool, portable: bool = True) -> List[Path]:
    """Run ``target``'s steps (in portable mode where they take it); copy and stamp what they write; return
    its docs files, each checked to name its command."""
    for step in target.steps:
        argv = step.argv(out, work, tiny, portable)
        env = portable_env() if portable and step.portable else None
        command = shlex.join(["python" if argv[0] == sys.executable else argv[0], *argv[1:]])
        print(f"[{target.name}] {command}", flush=True)
        # the record of the code that runs, taken before anything changes during the run
        prov = provenance(command, child_kernels(env, step.threads)) if step.stdout or step.copies else None
        (out / (step.stdout or ".")).parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE if step.stdout else None, text=True)
        if result.returncode:
            raise SystemExit(f"{target.name}: `{command}` exited with {result.returncode}")
        if step.stdout:
            write_text_atomic(out / step.stdout, result.stdout)
            stamp(out / step.stdout, prov)
        for source, dest in step.copies.items():
            (out / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / source, out / dest)
            stamp(out / dest, prov)
    missing = [f for f in target.files if not (out / f).exists() or read_provenance(out / f) is None]
    if missing:
        raise SystemExit(f"{target.name}: no file or no provenance record in {', '.join(missing)}")
    return [out / f for f in target.files]


def describe(target: Target) -> str:
    commands = "; ".join(s.command + " --portable" * s.portable for s in target.steps) or "(none)"
    return f"{target.name}: {', '.join(target.files)}\n    {commands}" + (f"\n    {target.note}" if target.note else "")


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(TARGETS), help="this target only (repeatable)")
    parser.add_argument("--tiny", action="store_true", help="each command's smoke mode (use with --out elsewhere)")
    parser.add_argument("-o", "--output", dest="out", type=Path, default=ROOT / "docs", help="the docs folder (default: the repository's)")
    parser.add_argument("--work", type=Path, default=ROOT / "xbn_results" / "regenerate", help="scratch results")
    parser.add_argument("--list", action="store_true", help="list the targets and their commands, run nothing")
    parser.add_argument("--portable", action=argparse.BooleanOptionalAction, default=True,
                        help="portable mode for every step that takes it (default: on, as for every committed file)")
    parser.add_argument("--check", action="store_true",
                        help="write into a scratch folder (--output if given) and compare with the committed files")
    parser.add_argument("--against", type=Path, default=ROOT / "docs", help="with --check: the committed folder")
    parser.add_argument("--from", dest="made", type=Path, help="with --check: compare this folder's files, run nothing")
    args = parser.parse_args(translate_argv(sys.argv[1:] if argv is None else argv, RENAMED["benchmarks/regenerate.py"]))
    names = args.only or [n for n, t in TARGETS.items() if t.steps]
    if args.list:
        print("\n".join(describe(TARGETS[n]) for n in (args.only or TARGETS)))
        return []
    if args.made and not args.check:
        parser.error("--from goes with --check")
    if args.check:  # never into the committed folder
        out_given = args.out.resolve() != (ROOT / "docs").resolve()
        args.out = args.made or (args.out if out_given else Path(tempfile.mkdtemp(prefix="xbn_regenerate_check_")))
    if args.tiny and args.out.resolve() == (ROOT / "docs").resolve():
        parser.error("--tiny would overwrite docs/ with meaningless numbers: give --output another folder")
    if args.made:
        absent = [f for name in names for f in TARGETS[name].files if not (args.made / f).is_file()]
        if absent:
            parser.error(f"--from {args.made}: no {', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}")
    written = []
    for name in names:
        if args.made:
            written += [args.out / f for f in TARGETS[name].files]
        else:
            written += run_target(TARGETS[name], args.out.resolve(), args.work.resolve(), args.tiny, args.portable)
    if not args.check:
        print(f"wrote {len(written)} files under {args.out}")
        return written
    results = check(args.against, args.out, [f for name in names for f in TARGETS[name].files])
    print(report(results))
    if not all(r.passed for r in results):
        raise SystemExit(1)
    return written


if __name__ == "__main__":
    main()
