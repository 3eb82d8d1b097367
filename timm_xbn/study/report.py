"""The paper's claims, checked against the study's numbers with confidence intervals over training seeds.

Every check returns a ``Claim``: what the paper says, the criterion, and its effects (``evidence.Effect``:
per-seed values, mean, sd over seeds, 95 % CI, verdict). The effects marked ``counts`` decide the
claim's verdict (``evidence.combine_verdicts``); the others are reported beside them. Nothing is
forced: a claim whose interval contains zero is INCONCLUSIVE, one whose interval excludes zero on
the other side is CONTRADICTED.
"""
import json
import math
from dataclasses import dataclass, field
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..utils.errors import UserError
from .config import JOB_KINDS, QUICK_NOTE, JobKind
from .tta import BESIDE, REFERENCE, TTA_STREAMS
from .evidence import (
    CONTRADICTED, HOLDS, INCONCLUSIVE, Effect, combine_verdicts, correlation_effect, effect_from_per_seed, paired_effect,
)

__all__ = ["Claim", "spearman", "growth", "esm_profiles", "evaluate_claims", "summary_lines", "compare_lines",
           "claims_from_csv", "config_differences", "design_differences", "is_quick"]


@dataclass
class Claim:
    """One claim (of the paper, or a hypothesis of this project): the criterion, the effects measured for it and the verdict."""

    id: str
    claim: str
    source: str
    criterion: str
    effects: List[Tuple[Effect, bool]] = field(default_factory=list)  # (effect, counts toward the verdict)
    predicted_by: str = "paper"  # who predicts the effects' direction: "paper" or "hypothesis"

    def add(self, effect: Effect, counts: bool = True) -> None:
        self.effects.append((effect, counts))

    @property
    def verdict(self) -> str:
        return combine_verdicts([e.verdict for e, counts in self.effects if counts])

    def to_dict(self) -> dict:
        return {"id": self.id, "claim": self.claim, "source": self.source, "criterion": self.criterion,
                "predicted_by": self.predicted_by,
                "verdict": self.verdict, "effects": [{**e.to_dict(), "counts": counts} for e, counts in self.effects]}


def _ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties get their average rank."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks); 0 when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two sequences of equal length >= 2, got {len(x)} and {len(y)}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx ** 2).sum() * (ry ** 2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def growth(values: Sequence[float]) -> Tuple[float, float, float]:
    """``(mean of the first third, mean of the last third, last / first)`` of per-layer values in depth order."""
    if len(values) < 3:
        raise ValueError(f"need at least 3 layers to compare thirds, got {len(values)}")
    k = len(values) // 3
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    return first, last, (last / first if first > 0 else float("inf"))


def _log_growth(values: Sequence[float]) -> float:
    first, last, _ = growth(values)
    return math.log(last / first) if first > 0 and last > 0 else math.nan


# ---- Section 4 (MLP) ------------------------------------------------------------------------------


def _early_epochs(epochs: int) -> int:
    return max(1, round(epochs * 3 / 8))


def esm_profiles(seed_runs: Mapping, epochs: int) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """For one seed's MLP runs, per case (setup one early epochs, setup two per training size):
    model -> [(layer, ESM_sigma)] in depth order."""
    early = _early_epochs(epochs)
    cases: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    label = f"setup one (S = S'), mean over epochs 1-{early}"
    cases[label] = {}
    for model, run in seed_runs["setup_one"].items():
        per_layer: Dict[int, List[float]] = {}
        for record in run["history"]:
            if record["epoch"] <= early and "esm" in record:
                for row in record["esm"]:
                    per_layer.setdefault(row["layer"], []).append(row["esm_sigma"])
        cases[label][model] = sorted((layer, float(np.mean(v))) for layer, v in per_layer.items())
    for size in seed_runs["setup_two"]["train_sizes"]:
        cases[f"setup two, |S| = {size}, end of training"] = {
            model: sorted((row["layer"], row["esm_sigma"]) for row in runs[str(size)]["final_esm"])
            for model, runs in seed_runs["setup_two"]["runs"].items()
        }
    return cases


def _mlp_cases(mlp: Mapping) -> Dict[str, List[Dict[str, List[Tuple[int, float]]]]]:
    """case -> one ESM profile dict per training seed."""
    out: Dict[str, list] = {}
    for seed_runs in mlp["by_seed"]:
        for case, models in esm_profiles(seed_runs, mlp["config"]["epochs"]).items():
            out.setdefault(case, []).append(models)
    return out


def claim_esm_grows(mlp: Mapping) -> Claim:
    claim = Claim(
        "bn_esm_grows_with_depth",
        "ESM_sigma of BN grows with depth (estimation shift accumulates)",
        "Sec. 4.2.1, Figs. 2-3 (MLP with BN in every layer)",
        "BN MLP, setup one: Spearman(layer, ESM_sigma) per training seed; its 95% CI over seeds (on Fisher's z, "
        "back-transformed) > 0. Setup two sizes are reported beside it",
    )
    for i, (case, per_seed) in enumerate(_mlp_cases(mlp).items()):
        rho = [spearman(*zip(*models["BN"])) for models in per_seed]
        claim.add(correlation_effect(f"Spearman(layer, ESM_sigma), {case}", rho, +1, len(per_seed[0]["BN"])),
                  counts=i == 0)
    return claim


def claim_gn_flattens(mlp: Mapping) -> Claim:
    claim = Claim(
        "gn_odd_layers_flatten_esm",
        "GN in the odd layers (GNBN) flattens the growth of ESM_sigma with depth",
        "Sec. 4.2.2, Figs. 4-5",
        "growth = ln(mean ESM_sigma of the last third of the BN layers / the first third), on the same (even) layers "
        "for both models; effect = growth(GNBN) - growth(BN) per seed, setup one; CI < 0. Setup two reported beside it",
    )
    for i, (case, per_seed) in enumerate(_mlp_cases(mlp).items()):
        bn, gnbn = [], []
        for models in per_seed:
            even = {layer for layer, _ in models["GNBN"]}
            bn.append(_log_growth([v for layer, v in models["BN"] if layer in even]))
            gnbn.append(_log_growth([v for _, v in models["GNBN"]]))
        claim.add(paired_effect(f"ln growth GNBN - BN, {case}", gnbn, bn, -1, "ln-ratio"), counts=i == 0)
    return claim


def claim_gnbn_gap(mlp: Mapping) -> Claim:
    early = _early_epochs(mlp["config"]["epochs"])
    claim = Claim(
        "gnbn_smaller_train_test_gap",
        "GNBN has a smaller gap between training and test error early in training",
        "Sec. 4.2.2, Fig. 4(a) (S = S')",
        f"setup one: mean |test error - train error| over epochs 1-{early}; effect = GNBN - BN per seed; CI < 0",
    )
    gaps: Dict[str, List[float]] = {"BN": [], "GNBN": []}
    for seed_runs in mlp["by_seed"]:
        for model, run in seed_runs["setup_one"].items():
            gaps[model].append(float(np.mean([abs(r["test_error"] - r["train_error"]) for r in run["history"]
                                              if r["epoch"] <= early and "test_error" in r])))
    claim.add(paired_effect("early train/test gap GNBN - BN", gaps["GNBN"], gaps["BN"], -1))
    return claim


def claim_gnbn_test_error(mlp: Mapping) -> Claim:
    claim = Claim(
        "gnbn_lower_test_error_small_s",
        "GNBN has a lower test error than BN when trained on few samples (distribution shift)",
        "Sec. 4.2.2, Fig. 5(b)",
        "setup two: final test error GNBN - BN per seed, averaged over the training-set sizes; CI < 0. "
        "Each size is reported beside it",
    )
    sizes = mlp["by_seed"][0]["setup_two"]["train_sizes"]
    per_size = {s: ([], []) for s in sizes}
    for seed_runs in mlp["by_seed"]:
        runs = seed_runs["setup_two"]["runs"]
        for s in sizes:
            per_size[s][0].append(runs["GNBN"][str(s)]["test_error"])
            per_size[s][1].append(runs["BN"][str(s)]["test_error"])
    gnbn_mean = np.mean([per_size[s][0] for s in sizes], axis=0)
    bn_mean = np.mean([per_size[s][1] for s in sizes], axis=0)
    claim.add(paired_effect("test error GNBN - BN, mean over |S|", gnbn_mean.tolist(), bn_mean.tolist(), -1))
    for s in sizes:
        claim.add(paired_effect(f"test error GNBN - BN, |S| = {s}", *per_size[s], -1), counts=False)
    return claim


# ---- Section 5 (ResNets) --------------------------------------------------------------------------


def _seeds(rn: Mapping) -> List[str]:
    return [str(s) for s in rn["seeds"]]


def _top1(rn: Mapping, variant: str) -> List[float]:
    return [rn["networks"][variant][s]["top1"] for s in _seeds(rn)]


def claim_table1_p2(rn: Mapping) -> Claim:
    claim = Claim(
        "xbn_p2_beats_bn",
        "XBNBlock-P2 (GN) reaches a higher top-1 than the BN network",
        "Sec. 5.2.1, Table 1",
        "top-1 XBN-GN (P2) - BN per training seed (same initial weights); CI > 0. P1 / P3 / IN reported beside it",
    )
    claim.add(paired_effect("top-1 XBN-GN (P2) - BN", _top1(rn, "XBN-GN"), _top1(rn, "BN"), +1))
    for variant in ("XBN-P1", "XBN-P3", "XBN-IN"):
        if variant in rn["networks"]:
            claim.add(paired_effect(f"top-1 {variant} - BN", _top1(rn, variant), _top1(rn, "BN"), +1), counts=False)
    return claim


def claim_table1_full_gn(rn: Mapping) -> Claim:
    claim = Claim(
        "all_gn_worse_than_bn",
        "A network with every BN replaced by GN ('Full') is worse than the BN network",
        "Sec. 5.2.1, Table 1 (75.63 vs 76.29 on ImageNet)",
        "top-1 GN - BN per training seed; CI < 0",
    )
    claim.add(paired_effect("top-1 GN (all norms) - BN", _top1(rn, "GN"), _top1(rn, "BN"), -1))
    return claim


def _drops(entry: Mapping) -> Dict[float, float]:
    """Noise magnitude -> clean top-1 minus the mean top-1 over perturbation seeds."""
    return {float(d): entry["clean_top1"] - v["mean"] for d, v in entry["deltas"].items()}


def claim_xbn_robust(rn: Mapping) -> Claim:
    rob = rn["robustness"]
    top = max(rob["deltas"])
    claim = Claim(
        "xbn_more_robust_to_delta",
        "XBNBlock networks lose less accuracy than BN as the noise magnitude Delta grows",
        f"Sec. 5.2.1, Fig. 8 (Eq. 5 on the first BN of the first {rob['blocks']} bottlenecks)",
        f"drop = clean top-1 - mean top-1 over {len(rob['perturb_seeds'])} perturbation seeds; effect = drop(XBN) - "
        f"drop(BN) at Delta = {top:g} per training seed; CI < 0 for every XBN variant. Mean over all Deltas beside it",
    )
    models = rob["models"]
    bn = [_drops(models["BN"][s]) for s in _seeds(rn)]
    for variant in models:
        if variant == "BN":
            continue
        xbn = [_drops(models[variant][s]) for s in _seeds(rn)]
        claim.add(paired_effect(f"drop at Delta={top:g}, {variant} - BN", [d[top] for d in xbn], [d[top] for d in bn], -1))
        claim.add(paired_effect(f"mean drop over Delta, {variant} - BN", [float(np.mean(list(d.values()))) for d in xbn],
                                [float(np.mean(list(d.values()))) for d in bn], -1), counts=False)
    return claim


def _small_batch(rn: Mapping, variant: str, batch: int) -> List[float]:
    return [rn["small_batch"]["models"][variant][str(batch)][s] for s in _seeds(rn)]


def claim_small_batch(rn: Mapping, baseline: str) -> Claim:
    sb = rn["small_batch"]
    sizes = sorted(sb["batch_sizes"])
    small = sizes[:-1]  # the largest size is the moderate reference
    # the paper: XBN beats BN at every small batch size, and beats GN at all but the smallest (Table 6)
    decisive = small if baseline == "BN" or len(small) < 2 else small[1:]
    claim = Claim(
        f"xbn_beats_{baseline.lower()}_small_batch",
        f"With small training batches XBNBlock-GN reaches a higher accuracy than {baseline}",
        "Sec. 5.3.2, Table 6 (detection from scratch, batch 2/4/8 per GPU)",
        f"top-1 XBN-GN - {baseline} per training seed after {sb['iterations']} iterations at batch "
        f"{', '.join(map(str, decisive))} (lr scaled by sqrt(batch)); CI > 0 at each. Other sizes beside it",
    )
    for b in sizes:
        claim.add(paired_effect(f"batch {b}: top-1 XBN-GN - {baseline}", _small_batch(rn, "XBN-GN", b),
                                _small_batch(rn, baseline, b), +1), counts=b in decisive)
    return claim


def _esm_level_and_growth(bn_rows: List[dict], xbn_rows: List[dict]) -> Tuple[float, float, float, float]:
    """ln mean ESM_sigma (per channel) of the deepest third and ln growth, for BN and XBN, on the
    BN layers both networks share (XBN's remaining BNs)."""
    shared = {r["name"] for r in xbn_rows}
    bn = sorted((r["depth"], r["esm_sigma_per_channel"]) for r in bn_rows if r["name"] in shared)
    xbn = sorted((r["depth"], r["esm_sigma_per_channel"]) for r in xbn_rows)
    k = max(1, len(bn) // 3)
    level = lambda rows: math.log(float(np.mean([v for _, v in rows[-k:]])))
    return level(bn), level(xbn), _log_growth([v for _, v in bn]), _log_growth([v for _, v in xbn])


def claim_esm_lower(rn: Mapping) -> Claim:
    esm = rn["esm"]
    claim = Claim(
        "xbn_lower_esm_deep_layers",
        "XBNBlock keeps the estimation shift of the deep BNs lower than in the BN network",
        "Sec. 4.2-5 (BFN blocks the accumulation); Definition 2 on the test split",
        "ln of the mean ESM_sigma per channel over the deepest third of the BN layers both networks have, "
        f"XBN - BN per training seed, on the clean test split and under {esm['corruption']} (severity "
        f"{esm['severity']}); CI < 0 for XBN-GN on both. XBN-IN and the ln growth (last / first third) beside it",
    )
    models = esm["models"]
    for variant in [v for v in models if v != "BN"]:
        for which in ("clean", "shifted"):
            numbers = [_esm_level_and_growth(models["BN"][s][which], models[variant][s][which]) for s in _seeds(rn)]
            data = "clean test" if which == "clean" else f"{esm['corruption']} test"
            counts = variant == "XBN-GN"
            claim.add(paired_effect(f"ln ESM_sigma deepest third {variant} - BN, {data}",
                                    [n[1] for n in numbers], [n[0] for n in numbers], -1, "ln-ratio"), counts=counts)
            claim.add(paired_effect(f"ln growth {variant} - BN, {data}", [n[3] for n in numbers],
                                    [n[2] for n in numbers], -1, "ln-ratio"), counts=False)
    return claim


def claim_adabn(rn: Mapping) -> Claim:
    adabn = rn["adabn"]
    claim = Claim(
        "adabn_recovers_shifted_accuracy",
        "AdaBN (recalibrating BN statistics on the shifted data) recovers part of the accuracy lost to the shift",
        "Sec. 1 / 4.2 (estimation shift under distribution shift); AdaBN, Li et al. 2016",
        f"BN network: gain = top-1 after - before recalibration on {adabn['calibration_samples']} corrupted training "
        f"images, evaluated on the corrupted test split (severity {adabn['severity']}); mean gain over the "
        "corruptions per training seed, CI > 0. Each corruption beside it",
    )
    per_seed = [adabn["models"]["BN"][s] for s in _seeds(rn)]
    corruptions = adabn["corruptions"]
    after = [float(np.mean([r[c]["after_top1"] for c in corruptions])) for r in per_seed]
    before = [float(np.mean([r[c]["before_top1"] for c in corruptions])) for r in per_seed]
    claim.add(paired_effect("BN top-1 after - before AdaBN, mean over corruptions", after, before, +1))
    for c in corruptions:
        claim.add(paired_effect(f"BN top-1 after - before AdaBN, {c}", [r[c]["after_top1"] for r in per_seed],
                                [r[c]["before_top1"] for r in per_seed], +1), counts=False)
    return claim


# ---- test-time adaptation (``tta``) ---------------------------------------------------------------


def _stream_loss(errors: Mapping, stream: str, methods: Sequence[str]) -> float:
    """Error on ``stream`` minus its reference stream's error (``REFERENCE``), mean over ``methods``."""
    return float(np.mean([errors[stream][m] - errors[REFERENCE[stream]][m] for m in methods]))


GRADIENT_METHODS = ("tent", "eata", "sar", "rotta")  # the adaptation check: do they move away from ``batch``?


def claim_tta_non_iid(tta: Mapping) -> Claim:
    cfg = tta["config"]
    averaged = [m for m in cfg["methods"] if m not in BESIDE]
    blocks = ", ".join(cfg["corruptions"])
    claim = Claim(
        "xbn_tta_loses_less_non_iid",
        "XBNBlock networks lose less accuracy than BN under test-time adaptation when test batches are not i.i.d.",
        "estimation shift at test time (this project's question; SAR's wild settings, NOTE, RoTTA, TTAB)",
        f"loss = top-1 error on a stream - error of the same images in i.i.d. batches of {cfg['batch_size']}; continual "
        f"stream of {cfg['test_samples'] or 'all'} test images, one block per corruption ({blocks}; severity "
        f"{cfg['severity']}), stream drawn per training seed; effect = loss(XBN-GN) - loss(BN) per training seed on the "
        f"label-shift stream (Dirichlet alpha {cfg['dirichlet']:g} per block), mean over {', '.join(averaged)}; CI < 0. "
        f"{', '.join(BESIDE)}, batch size 1, all-GN, each method and the gradient methods' gap to batch beside it",
        predicted_by="hypothesis",
    )
    seeds = [str(s) for s in tta["seeds"]]
    models = tta["models"]

    def losses(variant: str, stream: str, methods: Sequence[str]) -> List[float]:
        return [_stream_loss(models[variant][s], stream, methods) for s in seeds]

    for stream, label in (("label-shift", f"label shift (alpha {cfg['dirichlet']:g})"), ("batch-1", "batch size 1")):
        for variant in [v for v in models if v != "BN"]:
            claim.add(paired_effect(f"{label}: loss {variant} - BN, mean over methods", losses(variant, stream, averaged),
                                    losses("BN", stream, averaged), -1),
                      counts=stream == "label-shift" and variant == "XBN-GN")
        for method in cfg["methods"]:
            if "XBN-GN" in models and method != "source":
                claim.add(paired_effect(f"{label}: loss XBN-GN - BN, {method}", losses("XBN-GN", stream, [method]),
                                        losses("BN", stream, [method]), -1), counts=False)
    for variant in [v for v in ("BN", "XBN-GN") if v in models and "batch" in cfg["methods"]]:
        for method in [m for m in cfg["methods"] if m.partition(":")[0] in GRADIENT_METHODS]:
            claim.add(paired_effect(f"adaptation check, iid: {method} - batch, {variant}",
                                    [models[variant][s]["iid"][method] for s in seeds],
                                    [models[variant][s]["iid"]["batch"] for s in seeds], -1), counts=False)
    return claim


def evaluate_claims(results: Mapping, done: Sequence[str] = JOB_KINDS) -> List[Claim]:
    """All claims the study's results can speak to, in the order of the paper; with ``done``, only
    those whose numbers come from these job kinds alone (so each can be reported once its jobs finish)."""
    mlp, rn = results["mlp"], results["resnet"]
    claims = []
    if JobKind.MLP in done:
        claims += [claim_esm_grows(mlp), claim_gn_flattens(mlp), claim_gnbn_gap(mlp), claim_gnbn_test_error(mlp)]
    if JobKind.NETWORK in done:
        claims.append(claim_table1_p2(rn))
        if "GN" in rn["networks"]:
            claims.append(claim_table1_full_gn(rn))
        claims.append(claim_xbn_robust(rn))
    if JobKind.SMALL_BATCH in done:
        claims += [claim_small_batch(rn, "BN"), claim_small_batch(rn, "GN")]
    if JobKind.NETWORK in done:
        claims += [claim_esm_lower(rn), claim_adabn(rn)]
    if JobKind.TTA in done and results.get("tta", {}).get("models"):
        claims.append(claim_tta_non_iid(results["tta"]))
    return claims


def _mean_sd(values: Sequence[float]) -> str:
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return f"{np.mean(values):.2f} ± {sd:.2f}"


def claim_lines(c: Mapping, number: str = "") -> List[str]:
    """One claim (``Claim.to_dict()``): its verdict, criterion and every effect with its interval."""
    lines = [f"[{c['verdict']}] {number}{c['claim']}  ({c['source']})", f"    criterion: {c['criterion']}"]
    for e in c["effects"]:
        mark = "*" if e["counts"] else " "
        sign = ">" if e["direction"] > 0 else "<"
        lines.append(
            f"    {mark} {e['name']}: {e['mean']:+.3f} {e['unit']}, 95% CI [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}], "
            f"sd over {e['n']} seeds {e['sd']:.3f} ({c.get('predicted_by', 'paper')} {sign} 0) -> {e['verdict']}"
        )
    return lines


def tta_lines(tta: Mapping) -> List[str]:
    """The test-time adaptation errors: stream x variant rows, one column per method (empty without results)."""
    if not tta.get("models"):
        return []
    cfg = tta["config"]
    seeds = [str(s) for s in tta["seeds"]]
    lines = [f"Test-time adaptation (continual stream of {cfg['test_samples'] or 'all'} test images, a block per corruption: "
             f"{', '.join(cfg['corruptions'])}, severity {cfg['severity']}; each method reset per stream), top-1 error (%) "
             "mean ± sd over training seeds:",
             f"  {'stream':12s} {'variant':7s} " + " ".join(f"{m:>13s}" for m in cfg["methods"])]
    for stream in TTA_STREAMS:
        for variant, by_seed in tta["models"].items():
            cells = [_mean_sd([by_seed[s][stream][m] for s in seeds]) for m in cfg["methods"]]
            lines.append(f"  {stream:12s} {variant:7s} " + " ".join(f"{c:>13s}" for c in cells))
    lines.append(f"  (iid and label-shift: batches of {cfg['batch_size']}; label-shift: Dirichlet alpha {cfg['dirichlet']:g} "
                 f"per block; batch-1: the first {cfg['short_samples']} images of the iid order (a share of each block) "
                 "one at a time; iid-short: those images in iid batches)")
    return lines


def is_quick(results: Mapping) -> bool:
    """Whether ``results`` (study.json, or ``claims_from_csv``'s dict) are of a quick smoke run."""
    return results.get("config", {}).get("preset") == "quick"


def summary_lines(results: Mapping, skip: Collection[str] = ()) -> List[str]:
    """The plain-text summary: data, models and accuracies, then each claim with its verdict, criterion and
    effects (but the claims whose ids are in ``skip``, e.g. printed already). A quick run says so first and last."""
    ds = results["dataset"]
    mlp_cfg, rn = results["mlp"]["config"], results["resnet"]
    lines = [QUICK_NOTE.upper()] if is_quick(results) else []
    lines += [
        f"Data: {ds['description']}",
        f"Seeds: {results['seeds']}; torch threads per job: {results['threads']}",
        (
            f"Section 4 MLP: {mlp_cfg['depth']} layers x {mlp_cfg['width']} units, full-batch GD, {mlp_cfg['epochs']} epochs, "
            f"lr {mlp_cfg['lr']}, BN momentum {mlp_cfg['bn_momentum']} (= paper's alpha), GN groups {mlp_cfg['gn_groups']}; "
            f"S' = {results['mlp']['test_samples']} test images; {len(results['mlp']['by_seed'])} seeds"
        ),
        "Section 5 ResNets (" + rn["description"] + "):",
        "  test top-1 (%), mean ± sd over training seeds, then per seed:",
    ]
    for label, seeds in rn["networks"].items():
        values = [seeds[s]["top1"] for s in _seeds(rn)]
        lines.append(f"  {label:7s} {_mean_sd(values)}  ({', '.join(f'{v:.2f}' for v in values)})")
    sb = rn["small_batch"]
    lines.append(f"  small-batch training ({sb['iterations']} iterations each), test top-1 mean ± sd:")
    for label, sizes in sb["models"].items():
        cells = [f"b{b} {_mean_sd([sizes[str(b)][s] for s in _seeds(rn)])}" for b in sorted(sb["batch_sizes"])]
        lines.append(f"  {label:7s} " + " | ".join(cells))
    lines += tta_lines(results.get("tta", {}))
    shown = [(i, c) for i, c in enumerate(results["claims"], start=1) if c["id"] not in skip]
    lines += [""] if shown else []
    for i, c in shown:
        lines += claim_lines(c, f"{i}. ")
    counts = {v: sum(c["verdict"] == v for c in results["claims"]) for v in (HOLDS, CONTRADICTED, INCONCLUSIVE)}
    lines.append("")
    lines.append("(* = effect that decides the verdict; the others are reported beside it)")
    lines.append(f"{len(results['claims'])} claims on {ds['name']}: " + ", ".join(f"{n} {v}" for v, n in counts.items())
                 + (f" ({QUICK_NOTE})." if is_quick(results) else "."))
    return lines


def _check_recorded_effect(row: Mapping[str, str], label: str) -> None:
    """A claims.csv row's mean, interval and verdict recomputed from its per-seed values (``UserError`` if they differ)."""
    per_seed = [float(v) for v in row["per_seed"].split(";")]
    e = effect_from_per_seed(row["effect"], row["unit"], int(row["direction"]), per_seed, int(row.get("pairs") or 0))
    recorded = [float(row[k]) for k in ("mean", "ci_low", "ci_high")]
    if e.verdict != row["effect_verdict"] or not np.allclose([e.mean, e.ci_low, e.ci_high], recorded, rtol=1e-9, atol=1e-12,
                                                             equal_nan=True):
        raise UserError(f"{label}: effect {row['effect']!r} records {recorded} {row['effect_verdict']}, its per-seed values "
                        f"give {[e.mean, e.ci_low, e.ci_high]} {e.verdict}")


def claims_from_csv(rows: Sequence[Mapping[str, str]], label: str, config: Optional[Mapping[str, Any]] = None) -> dict:
    """The comparable part of a study result (``compare_lines``) from the rows of its ``claims.csv``
    (e.g. the committed ``docs/study/claims.csv``); ``label`` names it in the comparison, ``config`` is
    the design its ``# design:`` line records (older files have none)."""
    claims: Dict[str, dict] = {}
    for row in rows:
        claim = claims.setdefault(row["claim"], {"id": row["claim"], "claim": row["claim"], "verdict": row["verdict"], "effects": []})
        effect = {"name": row["effect"], "verdict": row["effect_verdict"], "counts": row.get("counts") == "True",
                  **{k: float(row[k]) for k in ("mean", "ci_low", "ci_high")}}
        if row.get("n"):
            effect["n"] = int(row["n"])
        if row.get("per_seed"):
            _check_recorded_effect(row, label)
        claim["effects"].append(effect)
    for claim in claims.values():
        if all(row.get("per_seed") for row in rows if row["claim"] == claim["id"]):
            recomputed = combine_verdicts([e["verdict"] for e in claim["effects"] if e["counts"]])
            if recomputed != claim["verdict"]:
                raise UserError(f"{label}: claim {claim['id']} records {claim['verdict']}, its deciding effects give {recomputed}")
    out = {"label": label, "claims": list(claims.values())}
    if config is not None:
        out["config"] = dict(config)
    return out


# settings two runs may differ in and still be compared (``study-compare``'s purpose: threads, machines)
_RUN_SETTINGS = ("threads", "device")


def _flat(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(first: Mapping[str, Any], second: Mapping[str, Any], ignore: Collection[str] = ()) -> List[str]:
    """``"setting: A vs B"`` for every (dotted) setting of two study configurations that differs, but ``ignore``;
    a ``preset`` missing from one (results written before presets were recorded) is not compared."""
    flat_a, flat_b = _flat(json.loads(json.dumps(first))), _flat(json.loads(json.dumps(second)))
    if "preset" not in flat_a or "preset" not in flat_b:
        ignore = (*ignore, "preset")
    keys = [k for k in dict.fromkeys([*flat_a, *flat_b]) if k not in ignore]
    return [f"{k}: {flat_a.get(k, '-')} vs {flat_b.get(k, '-')}" for k in keys if flat_a.get(k) != flat_b.get(k)]


def _seed_counts(results: Mapping) -> set:
    return {e["n"] for c in results["claims"] for e in c["effects"] if "n" in e}


def design_differences(first: Mapping, second: Mapping) -> List[str]:
    """The design settings in which two study results differ, as ``"setting: A vs B"`` (empty when the
    designs agree). Thread count and device are not design: comparing them is what ``study-compare``
    is for. A result without its design (an older claims.csv) is compared by its seed count."""
    a, b = first.get("config"), second.get("config")
    if a is not None and b is not None:
        return config_differences(a, b, ignore=_RUN_SETTINGS)
    out = []
    if is_quick(first) != is_quick(second):
        preset = lambda r: "quick" if is_quick(r) else "not recorded" if r.get("config") is None else r["config"].get("preset")
        out.append(f"preset: {preset(first)} vs {preset(second)}")
    seeds_a, seeds_b = _seed_counts(first), _seed_counts(second)
    if seeds_a and seeds_b and seeds_a != seeds_b:
        show = lambda s: "/".join(map(str, sorted(s)))
        out.append(f"training seeds per effect: {show(seeds_a)} vs {show(seeds_b)}")
    return out


def _run_label(results: Mapping) -> str:
    if "label" in results:
        return results["label"]
    return f"threads {results['threads']}, {results['dataset']['name']}"


def compare_lines(first: Mapping, second: Mapping) -> List[str]:
    """Two study results side by side: each claim's verdicts and each effect's means and intervals,
    e.g. to check that a run with another thread count, on another machine or of a changed design
    reaches the same verdicts. An effect whose means differ by more than the half-width of A's
    interval is marked MOVED."""
    other = {c["id"]: c for c in second["claims"]}
    lines = [f"A: {_run_label(first)}; B: {_run_label(second)}"]
    same = moved = 0
    for claim in first["claims"]:
        match = other.get(claim["id"])
        if match is None:
            lines.append(f"[only in A] {claim['claim']}")
            continue
        agree = claim["verdict"] == match["verdict"]
        same += agree
        lines.append(f"[{'same' if agree else 'DIFFERENT'}] {claim['claim']}: A {claim['verdict']}, B {match['verdict']}")
        effects_b = {e["name"]: e for e in match["effects"]}
        for e in claim["effects"]:
            b = effects_b.get(e["name"])
            if b is not None:
                shift, half = e["mean"] - b["mean"], (e["ci_high"] - e["ci_low"]) / 2
                moved += abs(shift) > half
                lines.append(f"    {e['name']}: A {e['mean']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}] {e['verdict']}; "
                             f"B {b['mean']:+.3f} [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}] {b['verdict']}; "
                             f"A - B {shift:+.3f}" + (f"  MOVED (more than A's CI half-width {half:.3f})" if abs(shift) > half else ""))
    lines += [f"[only in B] {c['claim']}" for c in second["claims"] if c["id"] not in {c["id"] for c in first["claims"]}]
    lines.append(f"{same} of {len(first['claims'])} claims have the same verdict in both runs; "
                 f"{moved} effect(s) moved by more than A's CI half-width.")
    return lines
