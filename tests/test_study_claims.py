"""Every study claim in the paper's direction, its mirror and a null, on synthetic per-seed numbers;
the t interval at two seeds; and the job fingerprints against every configuration field.

The synthetic results are written from the paper's statements (not from ``report.py``): with
``s = +1`` every variant differs from its baseline the way the paper says (e.g. "the all-GN network
is worse than BN": GN top-1 = BN top-1 - 1), with ``s = -1`` the other way, with ``s = 0`` the
per-seed differences are small numbers of both signs. So a claim whose predicted direction is
flipped in the code reads CONTRADICTED where HOLDS is expected, and the other way round.
"""
import csv
import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from timm_xbn.study import StudyConfig
from timm_xbn.study.evidence import CONTRADICTED, HOLDS, INCONCLUSIVE, paired_effect
from timm_xbn.study.jobs import job_fingerprints, plan_jobs
from timm_xbn.study.tta import TTAConfig
from timm_xbn.study.mlp import MLPConfig
from timm_xbn.study.report import compare_lines, evaluate_claims
from timm_xbn.study.resnet import SCHEDULES, ResNetConfig
from timm_xbn.utils.errors import UserError

SEEDS = (0, 1, 2)
JITTER = (0.03, -0.05, 0.02)  # per-seed wobble of every difference: both signs, so s = 0 is a null effect


def wobble(s: int, size: float, seed: int) -> float:
    """A per-seed difference of ``s * size`` plus the seed's wobble (s = 0: a mean near 0, both signs)."""
    return size * (s + JITTER[seed] * (1 if s else 10))


# ---- synthetic study results, written from the paper's statements ---------------------------------


def _esm_rows(profile, layers):
    return [{"name": f"layers.{l - 1}.norm", "layer": l, "esm_mu": 0.0, "esm_sigma": v} for l, v in zip(layers, profile)]


def _mlp_run(profile, layers, gap, test_error):
    history = [{"epoch": e, "train_error": 40.0, "test_error": 40.0 + gap, "esm": _esm_rows(profile, layers)} for e in (1, 2)]
    return {"history": history, "final_esm": _esm_rows(profile, layers), "train_error": 0.0, "test_error": test_error}


def mlp_section(s: int) -> dict:
    """Sec. 4: BN's ESM_sigma grows with depth (exp(a l), a > 0), GNBN's is flat, GNBN has the smaller
    early train/test gap and the lower test error on few samples."""
    depth, sizes = 12, (32, 64)
    every, even = range(1, depth + 1), range(2, depth + 1, 2)
    by_seed = []
    for seed in SEEDS:
        a = wobble(s, 0.1, seed)
        bn_profile = [math.exp(a * l) for l in every]
        gnbn_profile = [1.0] * len(even)
        bn_gap, gnbn_gap = 10.0, 10.0 - wobble(s, 2.0, seed)
        setup_two = {str(n): (_mlp_run(bn_profile, every, 0.0, 50.0 + n / 100),
                              _mlp_run(gnbn_profile, even, 0.0, 50.0 + n / 100 - wobble(s, 2.0, seed)))
                     for n in sizes}
        by_seed.append({
            "seed": seed,
            "setup_one": {"BN": _mlp_run(bn_profile, every, bn_gap, 50.0),
                          "GNBN": _mlp_run(gnbn_profile, even, gnbn_gap, 50.0)},
            "setup_two": {"train_sizes": list(sizes), "runs": {
                "BN": {n: runs[0] for n, runs in setup_two.items()}, "GNBN": {n: runs[1] for n, runs in setup_two.items()}}},
        })
    return {"config": {"epochs": 4}, "by_seed": by_seed}


def _bn_esm_rows(w: float, names):
    """ESM rows of BN layers ``bn<depth>``: ESM_sigma per channel = (1 + depth) exp(-w (1 + depth / 8))."""
    return [{"name": name, "depth": d, "esm_sigma_per_channel": (1 + d) * math.exp(-w * (1 + d / 8))}
            for name, d in ((name, int(name[2:])) for name in names)]


def resnet_section(s: int) -> dict:
    """Sec. 5: XBN-GN beats BN (Table 1), all-GN is worse than BN, XBN loses less accuracy under Delta
    (Fig. 8), XBN-GN beats BN and GN at small batches (Table 6), XBN's deep BNs have a lower ESM, and
    AdaBN recovers accuracy on corrupted data."""
    seeds = [str(k) for k in SEEDS]
    base = {k: 80.0 + 2 * int(k) for k in seeds}  # the baseline varies with the seed, the pairing removes it
    top1 = {"BN": base, **{v: {k: base[k] + wobble(s, 1.0, int(k)) for k in seeds} for v in ("XBN-GN", "XBN-P1", "XBN-P3")},
            "GN": {k: base[k] - wobble(s, 1.0, int(k)) for k in seeds}}
    deltas = ("0.5", "0.9")

    def drops(k, less):  # drop at Delta: BN loses 3 and 6 points, XBN ``less`` points fewer at each
        return {"clean_top1": base[k], "deltas": {d: {"mean": base[k] - (3.0 + 3.0 * i) + less} for i, d in enumerate(deltas)}}

    robustness = {v: {k: drops(k, 0.0 if v == "BN" else wobble(s, 2.0, int(k))) for k in seeds} for v in ("BN", "XBN-GN", "XBN-IN")}
    sizes = (2, 4, 32)
    small = {"BN": {str(b): {k: 50.0 + b + int(k) for k in seeds} for b in sizes}}
    small["XBN-GN"] = {str(b): {k: v + wobble(s, 1.0, int(k)) for k, v in small["BN"][str(b)].items()} for b in sizes}
    small["GN"] = {str(b): {k: v - wobble(s, 1.0, int(k)) for k, v in small["XBN-GN"][str(b)].items()} for b in sizes}
    names = [f"bn{i}" for i in range(9)]

    def esm(k, variant):  # XBN's ESM is lower, the more so the deeper: exp(-w (1 + depth / 8)) times BN's
        w = 0.0 if variant == "BN" else wobble(s, 0.5, int(k))
        kept = names if variant == "BN" else names[::2]
        return {which: _bn_esm_rows(w, kept) for which in ("clean", "shifted")}

    def adabn(k):
        return {c: {"before_top1": 40.0 + int(k), "after_top1": 40.0 + int(k) + wobble(s, 3.0, int(k))} for c in ("fog", "snow")}

    return {
        "seeds": list(SEEDS),
        "networks": {v: {k: {"top1": t} for k, t in values.items()} for v, values in top1.items()},
        "robustness": {"blocks": 6, "deltas": [float(d) for d in deltas], "perturb_seeds": [0, 1], "models": robustness},
        "small_batch": {"iterations": 10, "batch_sizes": list(sizes), "models": small},
        "esm": {"corruption": "fog", "severity": 3, "models": {v: {k: esm(k, v) for k in seeds} for v in ("BN", "XBN-GN", "XBN-IN")}},
        "adabn": {"severity": 3, "calibration_samples": 10, "corruptions": ["fog", "snow"],
                  "models": {"BN": {k: adabn(k) for k in seeds}}},
    }


EXPECTED_CLAIMS = [
    "bn_esm_grows_with_depth", "gn_odd_layers_flatten_esm", "gnbn_smaller_train_test_gap", "gnbn_lower_test_error_small_s",
    "xbn_p2_beats_bn", "all_gn_worse_than_bn", "xbn_more_robust_to_delta", "xbn_beats_bn_small_batch",
    "xbn_beats_gn_small_batch", "xbn_lower_esm_deep_layers", "adabn_recovers_shifted_accuracy",
]


@pytest.mark.parametrize("s, verdict", [(1, HOLDS), (-1, CONTRADICTED), (0, INCONCLUSIVE)])
def test_every_claim_reads_the_paper_direction(s, verdict):
    claims = evaluate_claims({"mlp": mlp_section(s), "resnet": resnet_section(s)})
    assert [c.id for c in claims] == EXPECTED_CLAIMS
    for claim in claims:
        assert claim.verdict == verdict, (claim.id, [(e.name, e.per_seed, e.verdict) for e, _ in claim.effects])
        assert all(e.n == len(SEEDS) for e, _ in claim.effects)
        for effect, counts in claim.effects:  # the effects reported beside the verdict read the same way
            assert effect.verdict == verdict or (s == 0 and not counts), (claim.id, effect.name, effect.per_seed)


def test_decisive_effects_are_the_paired_differences_the_data_were_written_with():
    """The numbers behind each verdict, by hand (s = +1): the difference that decides it, per seed."""
    claims = {c.id: c for c in evaluate_claims({"mlp": mlp_section(1), "resnet": resnet_section(1)})}

    def decisive(claim_id, index=0):
        return [e for e, counts in claims[claim_id].effects if counts][index].per_seed

    d = [wobble(1, 1.0, k) for k in SEEDS]
    assert decisive("xbn_p2_beats_bn") == pytest.approx(d)
    assert decisive("all_gn_worse_than_bn") == pytest.approx([-x for x in d])
    assert decisive("xbn_more_robust_to_delta") == pytest.approx([-wobble(1, 2.0, k) for k in SEEDS])  # at Delta 0.9
    assert decisive("xbn_beats_gn_small_batch") == pytest.approx(d)  # batch 4: the paper's GN wins at the smallest
    assert [e.name for e, counts in claims["xbn_beats_gn_small_batch"].effects if counts] == ["batch 4: top-1 XBN-GN - GN"]
    assert [e.name for e, counts in claims["xbn_beats_bn_small_batch"].effects if counts] == [
        "batch 2: top-1 XBN-GN - BN", "batch 4: top-1 XBN-GN - BN"]
    assert decisive("gnbn_smaller_train_test_gap") == pytest.approx([-wobble(1, 2.0, k) for k in SEEDS])
    assert decisive("gnbn_lower_test_error_small_s") == pytest.approx([-wobble(1, 2.0, k) for k in SEEDS])
    assert decisive("adabn_recovers_shifted_accuracy") == pytest.approx([wobble(1, 3.0, k) for k in SEEDS])
    assert decisive("xbn_lower_esm_deep_layers") == pytest.approx([-2 * wobble(1, 0.5, k) for k in SEEDS])  # depth 8
    assert decisive("bn_esm_grows_with_depth") == pytest.approx([1.0, 1.0, 1.0])  # Spearman of exp(a l), a > 0
    # BN's even layers 2..12: ln(mean exp(a l) over the last third / the first third); GNBN flat: 0
    for k, value in zip(SEEDS, decisive("gn_odd_layers_flatten_esm")):
        a = wobble(1, 0.1, k)
        first, last = np.mean([math.exp(a * l) for l in (2, 4)]), np.mean([math.exp(a * l) for l in (10, 12)])
        assert value == pytest.approx(-math.log(last / first))


# ---- the interval ---------------------------------------------------------------------------------


def test_interval_at_two_seeds_is_finite_and_uses_t_with_one_degree_of_freedom():
    # differences 1 and 3: mean 2, sd sqrt(2); t(0.975, 1) = 12.706204736174707 (standard table value)
    e = paired_effect("x", [11.0, 13.0], [10.0, 10.0], +1)
    half = 12.706204736174707 * math.sqrt(2) / math.sqrt(2)
    assert math.isfinite(e.ci_low) and math.isfinite(e.ci_high)
    assert (e.ci_low, e.ci_high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert e.verdict == INCONCLUSIVE
    tight = paired_effect("x", [12.0, 12.01], [10.0, 10.0], +1)  # half-width 12.706 * 0.00707 / 1.414 = 0.0635
    assert tight.verdict == HOLDS and tight.ci_low == pytest.approx(2.005 - 12.706204736174707 * 0.005, rel=1e-9)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_interval_equals_scipy_one_sample_t_interval(n):
    rng = np.random.default_rng(n)
    variant, baseline = rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n)
    e = paired_effect("x", variant.tolist(), baseline.tolist(), -1)
    ci = stats.ttest_1samp(variant - baseline, 0.0).confidence_interval(0.95)
    assert (e.ci_low, e.ci_high) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))


# ---- job fingerprints -----------------------------------------------------------------------------

# What each job kind reads (from jobs.py's _mlp_job / _network_job / _small_batch_job and the data they
# get): every field not listed here as unused must change the kind's fingerprint.
STUDY_FIELDS_UNUSED = {"train_seeds",  # a job's own training seed is in its key, not in its kind's folder
                       "preset_name"}  # the preset's name: its settings are the fields themselves
_EVALUATION = {"resnet.variants", "resnet.small_batch_variants", "resnet.small_batch_sizes", "resnet.small_batch_iterations",
               "resnet.eval_samples", "resnet.eval_batch_size", "resnet.robustness_variants", "resnet.deltas",
               "resnet.perturb_seeds", "resnet.blocks", "resnet.esm_variants", "resnet.esm_corruption",
               "resnet.adabn_variants", "resnet.corruptions", "resnet.severity", "resnet.calib_samples"}
UNUSED = {
    "mlp": {"resnet", "device", "tta"},  # the MLPs always run on the CPU
    "network": {"mlp", "tta", "resnet.variants", "resnet.small_batch_variants", "resnet.small_batch_sizes",
                "resnet.small_batch_iterations"},
    "small_batch": {"mlp", "tta", "resnet.variants", "resnet.small_batch_variants", "resnet.small_batch_sizes", "resnet.epochs",
                    "resnet.min_steps", "resnet.schedule", "resnet.label_smoothing", "resnet.robustness_variants", "resnet.deltas", "resnet.perturb_seeds",
                    "resnet.blocks", "resnet.esm_variants", "resnet.esm_corruption", "resnet.adabn_variants",
                    "resnet.corruptions", "resnet.severity", "resnet.calib_samples"},
    # the main networks' training (their stored weights): everything but the evaluation settings
    "train": {"mlp", "tta", *_EVALUATION},
    # test-time adaptation of the stored networks: its own settings and the networks' training
    "tta": {"mlp", "tta.variants", *_EVALUATION},
}
DATA = SimpleNamespace(name="fake", source="memory", train_y=[0] * 50, test_y=[0] * 20)


def _changed(value):
    """A different value of the same kind (a valid one for the variant lists: one fewer)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if value in SCHEDULES:
        return next(s for s in SCHEDULES if s != value)
    if isinstance(value, str):
        return value + "_x"
    if value is None:
        return 7
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        return value[:-1] if len(value) > 1 else ()
    if isinstance(value, tuple):
        return value + (value[-1] + 1,) if value else (1,)
    raise AssertionError(f"no change rule for {value!r}: extend _changed")


def _variations():
    """(field path, changed StudyConfig) for every field of StudyConfig, MLPConfig and ResNetConfig."""
    base = StudyConfig()
    for f in dataclasses.fields(StudyConfig):
        if f.name not in ("mlp", "resnet", "tta"):
            yield f.name, dataclasses.replace(base, **{f.name: _changed(getattr(base, f.name))})
    for section, cls in (("mlp", MLPConfig), ("resnet", ResNetConfig), ("tta", TTAConfig)):
        for f in dataclasses.fields(cls):
            inner = getattr(base, section)
            yield f"{section}.{f.name}", dataclasses.replace(base, **{section: dataclasses.replace(
                inner, **{f.name: _changed(getattr(inner, f.name))})})


def test_every_field_a_job_kind_reads_changes_its_fingerprint_and_no_other():
    before = job_fingerprints(StudyConfig(), DATA)
    assert sorted(before) == sorted(UNUSED)
    covered = 0
    for path, cfg in _variations():
        after = job_fingerprints(cfg, DATA)
        for kind in UNUSED:
            unused = path in STUDY_FIELDS_UNUSED or path in UNUSED[kind] or path.split(".")[0] in UNUSED[kind]
            assert (after[kind] == before[kind]) == unused, (kind, path)
        covered += 1
    assert covered == len(dataclasses.fields(StudyConfig)) - 3 + len(dataclasses.fields(MLPConfig)) + len(
        dataclasses.fields(ResNetConfig)) + len(dataclasses.fields(TTAConfig))
    # the data set itself and the torch version: every kind
    for data in (SimpleNamespace(**{**vars(DATA), "name": "other"}), SimpleNamespace(**{**vars(DATA), "test_y": [0] * 21})):
        assert all(a != b for a, b in zip(job_fingerprints(StudyConfig(), data).values(), before.values()))


def test_every_job_of_a_plan_has_its_own_result_file_and_seeds_differ(tmp_path):
    cfg = StudyConfig(train_seeds=(0, 1, 2))
    jobs = plan_jobs(cfg, DATA)
    paths = [job.path(tmp_path) for job in jobs]
    assert len(set(paths)) == len(paths)
    assert {j.kind for j in jobs} == set(UNUSED) - {"train"}
    for kind in ("mlp", "network", "small_batch"):
        of_kind = [j for j in jobs if j.kind == kind]
        assert {j.seed for j in of_kind} == {0, 1, 2}
        for a in of_kind:  # jobs that differ only in the training seed never share a stored result
            twins = [b for b in of_kind if (b.variant, b.batch_size) == (a.variant, a.batch_size) and b.seed != a.seed]
            assert len(twins) == 2 and all(b.path(tmp_path) != a.path(tmp_path) for b in twins)
    networks = [j for j in jobs if j.kind == "network"]  # each network's trained weights have their own file too
    assert len({j.training_path(tmp_path) for j in networks}) == len(networks)
    assert all(j.training_path(tmp_path).parent != j.path(tmp_path).parent for j in networks)


# ---- study-compare --------------------------------------------------------------------------------


def _claim(claim_id: str, verdict: str, effects) -> dict:
    return {"id": claim_id, "claim": f"claim {claim_id}", "verdict": verdict,
            "effects": [{"name": n, "mean": m, "ci_low": lo, "ci_high": hi, "verdict": v} for n, m, lo, hi, v in effects]}


def test_compare_marks_effects_that_moved_more_than_the_half_width_of_a():
    a = {"threads": 1, "dataset": {"name": "d"}, "claims": [
        _claim("x", "HOLDS", [("e1", 1.0, 0.5, 1.5, "HOLDS"), ("e2", 2.0, 1.0, 3.0, "HOLDS")])]}
    b = {"threads": 2, "dataset": {"name": "d"}, "claims": [
        _claim("x", "HOLDS", [("e1", 1.6, 1.1, 2.1, "HOLDS"), ("e2", 2.9, 2.0, 3.8, "HOLDS")]),
        _claim("y", "INCONCLUSIVE", [("e3", 0.0, -1.0, 1.0, "INCONCLUSIVE")])]}
    lines = compare_lines(a, b)
    (e1,) = [line for line in lines if line.strip().startswith("e1:")]
    (e2,) = [line for line in lines if line.strip().startswith("e2:")]
    assert "MOVED" in e1 and "half-width 0.500" in e1  # |1.0 - 1.6| = 0.6 > 0.5
    assert "MOVED" not in e2  # |2.0 - 2.9| = 0.9 < 1.0
    assert "[only in B] claim y" in lines and lines[-1].startswith("1 of 1 claims") and "1 effect(s) moved" in lines[-1]


def test_claims_csv_compares_like_the_results_it_was_written_from(tmp_path):
    """The committed claims.csv stands for its run: read back, it compares as study.json does."""
    import csv

    results = {"threads": 1, "dataset": {"name": "d"}, "claims": [
        _claim("x", "HOLDS", [("e1", 1.0, 0.5, 1.5, "HOLDS")]), _claim("y", "CONTRADICTED", [("e2", -2.0, -3.0, -1.0, "CONTRADICTED")])]}
    rows = [{"claim": c["id"], "verdict": c["verdict"], "effect": e["name"], "counts": True, "mean": e["mean"],
             "ci_low": e["ci_low"], "ci_high": e["ci_high"], "sd": 0.1, "n": 5, "effect_verdict": e["verdict"]}
            for c in results["claims"] for e in c["effects"]]
    path = tmp_path / "claims.csv"
    with path.open("w", newline="") as f:
        f.write("# Written by `xbn-eval study` at commit abc on a machine.\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from timm_xbn.cli import eval_app
    from typer.testing import CliRunner

    out = tmp_path / "run"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"kind": "study", **results}))
    printed = CliRunner().invoke(eval_app, ["study-compare", str(path), str(out)])
    assert printed.exit_code == 0, printed.output
    expected = compare_lines(results, results)
    got = printed.output.splitlines()
    assert [line for line in got if line.startswith("    ")] == [line for line in expected if line.startswith("    ")]
    assert got[-1] == expected[-1] and got[1] == "[same] x: A HOLDS, B HOLDS"  # a CSV names a claim by its id
    assert printed.output.splitlines()[0] == f"A: {path}; B: threads 1, d"
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    refused = CliRunner().invoke(eval_app, ["study-compare", str(bad), str(out)])
    assert refused.exit_code == 2 and "not a study claims.csv" in refused.output


def test_claims_csv_recomputes_every_effect_from_its_per_seed_values(tmp_path):
    """claims.csv records each effect's per-seed values: reading it recomputes the mean, interval and verdict
    (t interval; Fisher z for a correlation) and each claim's verdict, and refuses a file where they disagree."""
    from timm_xbn.study.evidence import correlation_effect
    from timm_xbn.study.report import Claim, claims_from_csv
    from timm_xbn.study.run import _write_claims_csv

    paired = Claim("p", "a paired claim", "paper", "CI > 0")
    paired.add(paired_effect("gain", [1.2, 0.8, 1.1, 0.9, 1.4], [0.0] * 5, +1))
    paired.add(paired_effect("beside", [0.1, -0.3, 0.2, 0.0, -0.1], [0.0] * 5, +1), counts=False)
    corr = Claim("r", "a correlation", "paper", "CI > 0")
    corr.add(correlation_effect("rho", [0.98, 0.97, 1.0, 0.95, 0.99], +1, pairs=8))
    path = tmp_path / "claims.csv"
    _write_claims_csv(path, {"config": {"preset": "default"}, "claims": [paired.to_dict(), corr.to_dict()]})
    rows = [r for r in csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#"))]
    # the recorded interval is the one computed by hand: mean ± t(0.975, 4) sd / sqrt(5)
    gain = np.array([1.2, 0.8, 1.1, 0.9, 1.4])
    half = 2.7764451051977987 * gain.std(ddof=1) / np.sqrt(5)
    assert float(rows[0]["ci_low"]) == pytest.approx(gain.mean() - half, abs=1e-12)
    read = claims_from_csv(rows, "committed")
    assert [c["verdict"] for c in read["claims"]] == ["HOLDS", "HOLDS"]
    for column, value in (("per_seed", "1.2;0.8;1.1;0.9;-1.4"), ("ci_high", "9.0")):
        tampered = [dict(r) for r in rows]
        tampered[0][column] = value
        with pytest.raises(UserError, match="per-seed values give"):
            claims_from_csv(tampered, "committed")
    tampered = [dict(r) for r in rows]
    tampered[2]["pairs"] = "4"  # the correlation's interval depends on its point count (the clip at rho = 1)
    with pytest.raises(UserError, match="rho"):
        claims_from_csv(tampered, "committed")
    tampered = [dict(r) for r in rows]
    for r in tampered[:2]:
        r["verdict"] = "INCONCLUSIVE"
    with pytest.raises(UserError, match="deciding effects give HOLDS"):
        claims_from_csv(tampered, "committed")
