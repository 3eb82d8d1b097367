"""The committed study (docs/study): every claim recomputed from its per-seed files.

``claims.csv`` records each effect's per-seed values; reading it (``claims_from_csv``) recomputes every
effect's mean, interval and verdict and every claim's verdict. Here the deciding per-seed values of the
Section 5 claims are recomputed once more, independently, from the per-seed tables committed beside it
(``resnet_top1.csv``, ``resnet_robustness.csv``, ``resnet_small_batch.csv``, ``resnet_adabn.csv``, ``tta.csv``).
"""
import csv
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from timm_xbn.study.report import claims_from_csv

STUDY = Path(__file__).resolve().parent.parent / "docs" / "study"


def _rows(path: Path) -> List[dict]:
    return list(csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#")))


def _per_seed(claims: List[dict], effect: str) -> List[float]:
    (row,) = [r for r in claims if r["effect"] == effect]
    return [float(v) for v in row["per_seed"].split(";")]


def recomputed_effects(folder: Path) -> Dict[str, List[float]]:
    """Effect name -> per-seed values, computed here from the per-seed tables of ``folder``."""
    top1 = {(r["model"], r["train_seed"]): float(r["top1"]) for r in _rows(folder / "resnet_top1.csv")}
    seeds = sorted({s for _, s in top1}, key=int)
    out = {
        "XBN-GN - BN top-1": [top1["XBN-GN", s] - top1["BN", s] for s in seeds],
        "GN - BN top-1": [top1["GN", s] - top1["BN", s] for s in seeds],
    }
    # Fig. 8: drop at the largest delta, perturbation seeds averaged inside each training seed
    robust = defaultdict(list)
    for r in _rows(folder / "resnet_robustness.csv"):
        robust[r["model"], r["train_seed"], float(r["delta"])].append(float(r["top1"]))
    delta = max(d for _, _, d in robust)
    drop = {(m, s): np.mean(robust[m, s, 0.0]) - np.mean(robust[m, s, delta]) for m, s, d in robust if d == delta}
    out["XBN-GN - BN drop"] = [drop["XBN-GN", s] - drop["BN", s] for s in seeds]
    small = {(r["model"], r["batch_size"], r["train_seed"]): float(r["top1"]) for r in _rows(folder / "resnet_small_batch.csv")}
    for b in sorted({b for _, b, _ in small}, key=int):
        out[f"small batch {b}: XBN-GN - BN"] = [small["XBN-GN", b, s] - small["BN", b, s] for s in seeds]
    adabn = defaultdict(list)
    for r in _rows(folder / "resnet_adabn.csv"):
        adabn[r["train_seed"]].append(float(r["after_top1"]) - float(r["before_top1"]))
    out["AdaBN gain"] = [float(np.mean(adabn[s])) for s in seeds]
    # claim 12: loss = error on a stream - error of the same images in i.i.d. batches, mean over the
    # grouping-dependent methods (source and norm beside)
    err = {(r["model"], r["train_seed"], r["stream"], r["method"]): float(r["top1_error"]) for r in _rows(folder / "tta.csv")}
    methods = sorted({m for _, _, _, m in err if m not in ("source", "norm")})

    def loss(model: str, seed: str) -> float:
        return float(np.mean([err[model, seed, "label-shift", m] - err[model, seed, "iid", m] for m in methods]))

    out["tta label shift: XBN-GN - BN"] = [loss("XBN-GN", s) - loss("BN", s) for s in seeds]
    return out


def check_folder(folder: Path) -> None:
    claims = _rows(folder / "claims.csv")
    assert all(r["per_seed"] for r in claims), "claims.csv without per-seed values"
    claims_from_csv(claims, str(folder))  # recomputes every interval and verdict, raises if one differs
    mine = recomputed_effects(folder)
    names = {
        "XBN-GN - BN top-1": "top-1 XBN-GN (P2) - BN",
        "GN - BN top-1": "top-1 GN (all norms) - BN",
        "XBN-GN - BN drop": f"drop at Delta={max_delta(folder):g}, XBN-GN - BN",
        "tta label shift: XBN-GN - BN": "label shift (alpha 0.1): loss XBN-GN - BN, mean over methods",
        "AdaBN gain": "BN top-1 after - before AdaBN, mean over corruptions",
    }
    recorded = {r["effect"] for r in claims}
    for key, effect in names.items():
        assert effect in recorded, f"{effect!r} not in claims.csv"
        assert _per_seed(claims, effect) == pytest.approx(mine[key], abs=1e-9), effect
    batches = [r["effect"] for r in claims if r["effect"].endswith(": top-1 XBN-GN - BN")]
    assert batches
    for effect in batches:
        b = effect.split(":")[0].split()[1]
        assert _per_seed(claims, effect) == pytest.approx(mine[f"small batch {b}: XBN-GN - BN"], abs=1e-9), effect


def max_delta(folder: Path) -> float:
    return max(float(r["delta"]) for r in _rows(folder / "resnet_robustness.csv"))


def test_committed_study_claims_recompute_from_the_per_seed_files():
    check_folder(STUDY)
