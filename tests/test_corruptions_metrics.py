"""ImageNet-C metrics against hand computations and the published AlexNet normalisation."""
import inspect
import math

import pytest

from timm_xbn.corruptions import (
    ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, CORRUPTIONS, corruption_error, mean_corruption_error, parse_corruptions,
    parse_severities, relative_corruption_error, summarize,
)
from timm_xbn.adapt import Prior
from timm_xbn.grid import parse_adapt


def alexnet_errors():
    return {c: {str(s): e for s, e in enumerate(errs, 1)} for c, errs in ALEXNET_ERRORS.items()}


def test_alexnet_table_is_the_published_one():
    assert sorted(ALEXNET_ERRORS) == sorted(CORRUPTIONS)
    # spot values from Hendrycks & Dietterich (2019), fractions x 100
    assert ALEXNET_ERRORS["gaussian_noise"] == (69.528, 82.542, 93.554, 98.138, 99.452)
    assert ALEXNET_ERRORS["elastic_transform"][2] == 55.686
    assert ALEXNET_ERRORS["jpeg_compression"][4] == 74.778
    assert ALEXNET_CLEAN_ERROR == 43.478


def test_alexnet_errors_give_ce_and_mce_of_100():
    errors = alexnet_errors()
    for c in CORRUPTIONS:
        assert corruption_error(errors[c], c) == pytest.approx(100.0, abs=1e-9)
    summary = summarize(errors, clean_error=ALEXNET_CLEAN_ERROR)
    assert summary["complete"] and summary["missing"] == []
    assert summary["mce"] == pytest.approx(100.0, abs=1e-9)
    assert summary["relative_mce"] == pytest.approx(100.0, abs=1e-9)
    assert all(v == pytest.approx(100.0) for v in summary["relative_ce"].values())


def test_ce_and_relative_ce_by_hand():
    errors = {1: 30.0, 2: 40.0, 3: 50.0, 4: 60.0, 5: 70.0}
    # AlexNet gaussian_noise: 69.528 + 82.542 + 93.554 + 98.138 + 99.452 = 443.214
    assert corruption_error(errors, "gaussian_noise") == pytest.approx(100 * 250 / 443.214)
    # gaps: 10 + 20 + 30 + 40 + 50 = 150 vs 443.214 - 5 * 43.478 = 225.824
    assert relative_corruption_error(errors, 20.0, "gaussian_noise") == pytest.approx(100 * 150 / 225.824)
    # a model whose corrupted errors equal its clean error has relative CE 0
    assert relative_corruption_error({s: 25.0 for s in range(1, 6)}, 25.0, "fog") == 0.0


def test_mce_is_the_plain_mean_of_the_15_ces():
    ce = {c: float(i) for i, c in enumerate(CORRUPTIONS)}
    assert mean_corruption_error(ce) == pytest.approx(sum(range(15)) / 15)


def test_incomplete_data_is_reported_never_averaged():
    errors = alexnet_errors()
    del errors["snow"]
    del errors["fog"]["3"]
    summary = summarize(errors, clean_error=40.0)
    assert summary["complete"] is False
    assert summary["missing"] == ["snow", "fog/3"]
    assert summary["mce"] is None and summary["relative_mce"] is None and summary["mean_error"] is None
    assert "fog" not in summary["ce"] and "snow" not in summary["ce"]
    assert summary["ce"]["frost"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match=r"missing \[3\]"):
        corruption_error(errors["fog"], "fog")
    with pytest.raises(ValueError, match="missing snow"):
        mean_corruption_error(summary["ce"] | {"fog": 1.0})


def test_relative_mce_needs_the_clean_error():
    summary = summarize(alexnet_errors())
    assert summary["mce"] == pytest.approx(100.0)
    assert summary["relative_mce"] is None and summary["relative_ce"] == {}


def test_extra_corruptions_do_not_enter_the_mce():
    errors = alexnet_errors() | {"spatter": {str(s): 0.0 for s in range(1, 6)}}
    assert summarize(errors)["mce"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no baseline errors for 'spatter'"):
        corruption_error(errors["spatter"], "spatter")


def test_parsing_names_severities_and_adapt():
    assert parse_corruptions("fog, snow,fog") == ["fog", "snow"]
    assert parse_corruptions(None) is None
    assert parse_severities("5,1, 3") == [1, 3, 5]
    with pytest.raises(ValueError, match="valid names: gaussian_noise, shot_noise"):
        parse_corruptions("fog,smog")
    for bad in ("0", "6", "two", "1.5"):
        with pytest.raises(ValueError, match="severity must be an integer in 1..5"):
            parse_severities(bad)
    with pytest.warns(DeprecationWarning, match="now called 'norm'"):
        assert parse_adapt("full") == "norm"  # 0.1's name of AdaBN
    assert parse_adapt("norm") == "norm" and parse_adapt("batch") == "batch"
    assert parse_adapt("prior:32") == "prior:32" and parse_adapt("mix:4") == "mix:4"
    assert parse_adapt(None) is None and parse_adapt("none") is None
    for bad in ("prior:-1", "prior:x", "adabn", "full:3", "tent"):
        with pytest.raises(ValueError, match="--adapt must be"):
            parse_adapt(bad)
    assert math.isclose(inspect.signature(Prior).parameters["prior"].default, 16.0)  # "prior" alone: N = 16
