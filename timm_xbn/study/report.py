"""The paper's claims, checked against the study's numbers with explicit criteria.

Every check returns a ``Claim``: what the paper says, the criterion used, the numbers per case
and whether the criterion was met. Nothing here is forced: a claim that the data do not
support is reported as not holding.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

__all__ = ["Claim", "spearman", "growth", "esm_profiles", "evaluate_claims", "summary_lines"]

SPEARMAN_MIN = 0.5


@dataclass
class Claim:
    """One paper claim: the verdict and the per-case evidence behind it."""

    id: str
    claim: str
    source: str
    criterion: str
    cases: List[dict] = field(default_factory=list)
    holds: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


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


def _majority(cases: List[dict]) -> bool:
    return sum(c["passed"] for c in cases) * 2 > len(cases)


def esm_profiles(mlp: Mapping) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """Per case (setup one early epochs, setup two per training size): model -> [(layer, ESM_sigma)]."""
    one = mlp["setup_one"]
    early = max(1, round(mlp["config"]["epochs"] * 3 / 8))
    cases: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    label = f"setup one (S = S'), mean over epochs 1-{early}"
    cases[label] = {}
    for model, run in one.items():
        per_layer: Dict[int, List[float]] = {}
        for record in run["history"]:
            if record["epoch"] <= early and "esm" in record:
                for row in record["esm"]:
                    per_layer.setdefault(row["layer"], []).append(row["esm_sigma"])
        cases[label][model] = sorted((layer, float(np.mean(v))) for layer, v in per_layer.items())
    for size in mlp["setup_two"]["train_sizes"]:
        label = f"setup two, |S| = {size}, end of training"
        cases[label] = {
            model: sorted((row["layer"], row["esm_sigma"]) for row in runs[str(size)]["final_esm"])
            for model, runs in mlp["setup_two"]["runs"].items()
        }
    return cases


def claim_esm_grows(mlp: Mapping) -> Claim:
    claim = Claim(
        "bn_esm_grows_with_depth",
        "ESM_sigma of BN grows with depth (estimation shift accumulates)",
        "Sec. 4.2.1, Figs. 2-3 (MLP with BN in every layer)",
        f"BN MLP: Spearman(layer, ESM_sigma) > {SPEARMAN_MIN} and mean ESM_sigma of the last third of the "
        f"layers > the first third; holds if met in a majority of cases",
    )
    for case, models in esm_profiles(mlp).items():
        layers, esm = zip(*models["BN"])
        rho = spearman(layers, esm)
        first, last, ratio = growth(esm)
        claim.cases.append({
            "case": case, "passed": rho > SPEARMAN_MIN and last > first,
            "numbers": f"Spearman {rho:+.2f}, first third {first:.3f}, last third {last:.3f} (x{ratio:.2f})",
            "spearman": rho, "first_third": first, "last_third": last,
        })
    claim.holds = _majority(claim.cases)
    return claim


def claim_gn_flattens(mlp: Mapping) -> Claim:
    claim = Claim(
        "gn_odd_layers_flatten_esm",
        "GN in the odd layers (GNBN) flattens the growth of ESM_sigma with depth",
        "Sec. 4.2.2, Figs. 4-5",
        "growth = mean ESM_sigma of the last third of a model's BN layers / the first third; compared on the "
        "same layers (GNBN's BNs sit in the even layers, so BN is restricted to the even layers too): "
        "growth(GNBN) < growth(BN); holds if met in a majority of cases",
    )
    for case, models in esm_profiles(mlp).items():
        gnbn = models["GNBN"]
        even = {layer for layer, _ in gnbn}
        bn = [(layer, v) for layer, v in models["BN"] if layer in even]
        _, _, g_bn = growth([v for _, v in bn])
        _, _, g_gnbn = growth([v for _, v in gnbn])
        mean_bn, mean_gnbn = float(np.mean([v for _, v in bn])), float(np.mean([v for _, v in gnbn]))
        claim.cases.append({
            "case": case, "passed": g_gnbn < g_bn,
            "numbers": f"growth BN x{g_bn:.2f} vs GNBN x{g_gnbn:.2f}; mean ESM_sigma BN {mean_bn:.3f} vs GNBN {mean_gnbn:.3f}",
            "growth_bn": g_bn, "growth_gnbn": g_gnbn, "mean_bn": mean_bn, "mean_gnbn": mean_gnbn,
        })
    claim.holds = _majority(claim.cases)
    return claim


def claim_gnbn_gap(mlp: Mapping) -> Claim:
    early = max(1, round(mlp["config"]["epochs"] * 3 / 8))
    claim = Claim(
        "gnbn_smaller_train_test_gap",
        "GNBN has a smaller gap between training and test error early in training",
        "Sec. 4.2.2, Fig. 4(a) (S = S')",
        f"setup one: mean |test error - train error| over epochs 1-{early}: GNBN < BN",
    )
    gaps = {}
    for model, run in mlp["setup_one"].items():
        gaps[model] = float(np.mean([
            abs(r["test_error"] - r["train_error"]) for r in run["history"] if r["epoch"] <= early and "test_error" in r
        ]))
    claim.cases.append({
        "case": f"setup one, epochs 1-{early}", "passed": gaps["GNBN"] < gaps["BN"],
        "numbers": f"mean gap BN {gaps['BN']:.2f} vs GNBN {gaps['GNBN']:.2f} points",
        "gap_bn": gaps["BN"], "gap_gnbn": gaps["GNBN"],
    })
    claim.holds = claim.cases[0]["passed"]
    return claim


def claim_gnbn_test_error(mlp: Mapping) -> Claim:
    claim = Claim(
        "gnbn_lower_test_error_small_s",
        "GNBN has a lower test error than BN when trained on few samples (distribution shift)",
        "Sec. 4.2.2, Fig. 5(b)",
        "setup two: final test error GNBN < BN; holds if met for a majority of training-set sizes",
    )
    runs = mlp["setup_two"]["runs"]
    for size in mlp["setup_two"]["train_sizes"]:
        bn, gnbn = runs["BN"][str(size)]["test_error"], runs["GNBN"][str(size)]["test_error"]
        claim.cases.append({
            "case": f"|S| = {size}", "passed": gnbn < bn,
            "numbers": f"test error BN {bn:.2f}% vs GNBN {gnbn:.2f}%", "bn": bn, "gnbn": gnbn,
        })
    claim.holds = _majority(claim.cases)
    return claim


def _drops(entry: Mapping) -> Dict[float, float]:
    return {float(d): entry["clean_top1"] - v["mean"] for d, v in entry["deltas"].items()}


def claim_xbn_robust(robustness: Mapping) -> Claim:
    claim = Claim(
        "xbn_more_robust_to_delta",
        "XBNBlock networks lose less accuracy than BN as the noise magnitude Delta grows",
        "Sec. 5.2.1, Fig. 8 (Eq. 5 on the first BN of the first disturbed blocks)",
        "for each XBN variant: accuracy drop (clean - mean over seeds) at the largest Delta < BN's, and mean "
        "drop over all Deltas < BN's; holds if met by every XBN variant",
    )
    models = robustness["models"]
    bn = _drops(models["BN"])
    top = max(bn)
    for label, entry in models.items():
        if label == "BN":
            continue
        xbn = _drops(entry)
        mean_bn, mean_xbn = float(np.mean(list(bn.values()))), float(np.mean(list(xbn.values())))
        std_top = entry["deltas"][str(top)]["std"]
        claim.cases.append({
            "case": f"{label} vs BN", "passed": xbn[top] < bn[top] and mean_xbn < mean_bn,
            "numbers": (
                f"drop at Delta={top:g}: BN {bn[top]:.2f} vs {label} {xbn[top]:.2f} points "
                f"(seed std {models['BN']['deltas'][str(top)]['std']:.2f} / {std_top:.2f}); "
                f"mean drop BN {mean_bn:.2f} vs {mean_xbn:.2f}"
            ),
            "drop_top_bn": bn[top], "drop_top_xbn": xbn[top], "mean_drop_bn": mean_bn, "mean_drop_xbn": mean_xbn,
        })
    claim.holds = bool(claim.cases) and all(c["passed"] for c in claim.cases)
    return claim


def claim_adabn(adabn: Mapping) -> Claim:
    claim = Claim(
        "adabn_recovers_shifted_accuracy",
        "AdaBN (recalibrating BN statistics on the shifted data) recovers part of the accuracy lost to the shift",
        "Sec. 1 / 4.2 (estimation shift under distribution shift); AdaBN, Li et al. 2016",
        "BN network, each corruption: gain = top-1 after - before recalibration; holds if the mean gain over the "
        "corruptions > 0 and the gain > 0 for a majority of them; recovered = gain / (clean - before)",
    )
    entries = adabn["models"]["BN"]
    clean = adabn["clean_top1"]["BN"]
    gains = []
    for corruption, r in entries.items():
        gain = r["after_top1"] - r["before_top1"]
        lost = clean - r["before_top1"]
        gains.append(gain)
        claim.cases.append({
            "case": f"{corruption} (severity {adabn['severity']})", "passed": gain > 0,
            "numbers": (
                f"clean {clean:.2f}, shifted {r['before_top1']:.2f}, after AdaBN {r['after_top1']:.2f} "
                f"(gain {gain:+.2f}, recovered {100 * gain / lost:.0f}% of the loss)" if lost > 0 else
                f"clean {clean:.2f}, shifted {r['before_top1']:.2f}, after AdaBN {r['after_top1']:.2f} "
                f"(gain {gain:+.2f}; the shift cost no accuracy)"
            ),
            "gain": gain,
        })
    claim.holds = float(np.mean(gains)) > 0 and _majority(claim.cases)
    return claim


def evaluate_claims(results: Mapping) -> List[Claim]:
    """All claims the study's results can speak to, in the order of the paper."""
    mlp, resnet = results["mlp"], results["resnet"]
    return [
        claim_esm_grows(mlp),
        claim_gn_flattens(mlp),
        claim_gnbn_gap(mlp),
        claim_gnbn_test_error(mlp),
        claim_xbn_robust(resnet["robustness"]),
        claim_adabn(resnet["adabn"]),
    ]


def summary_lines(results: Mapping) -> List[str]:
    """The plain-text summary: data, models, then each claim with its verdict, criterion and numbers."""
    ds = results["dataset"]
    mlp_cfg, rn = results["mlp"]["config"], results["resnet"]
    lines = [
        f"Data: {ds['description']}",
        f"Seeds: {results['seeds']}; torch threads: {results['threads']}",
        (
            f"Section 4 MLP: {mlp_cfg['depth']} layers x {mlp_cfg['width']} units, full-batch GD, {mlp_cfg['epochs']} epochs, "
            f"lr {mlp_cfg['lr']}, BN momentum {mlp_cfg['bn_momentum']} (= paper's alpha), GN groups {mlp_cfg['gn_groups']}; "
            f"S' = {results['mlp']['test_samples']} test images"
        ),
        "Section 5 ResNet (" + rn["description"] + "):",
    ]
    for label, m in rn["models"].items():
        lines.append(f"  {label:7s} clean top-1 {m['clean_top1']:.2f}%  (train top-1 last epoch {m['history'][-1]['train_top1']:.2f}%)")
    lines.append("")
    for i, c in enumerate(results["claims"], start=1):
        verdict = "HOLDS" if c["holds"] else "DOES NOT HOLD"
        lines.append(f"[{verdict}] {i}. {c['claim']}  ({c['source']})")
        lines.append(f"    criterion: {c['criterion']}")
        for case in c["cases"]:
            lines.append(f"    {'+' if case['passed'] else '-'} {case['case']}: {case['numbers']}")
    held = sum(c["holds"] for c in results["claims"])
    lines.append("")
    lines.append(f"{held} of {len(results['claims'])} paper claims held on {ds['name']}.")
    return lines
