"""A model card never carries an accuracy or error outside [0, 100]: results files with one are refused, naming
the field; CE and mCE (ratios to AlexNet's errors) may pass 100."""
import json

import pytest

from timm_xbn.hub.results import load_results


def write(tmp_path, data):
    path = tmp_path / f"{data['kind']}.json"
    path.write_text(json.dumps(data))
    return path


ROBUSTNESS = {"kind": "robustness", "dataset": "d", "blocks": 6, "seeds": [0, 1],
              "models": {"m": {"clean_top1": 70.0, "deltas": {"0.5": {"mean": 60.0, "std": 1.0}}}}}
CORRUPTION = {"kind": "corruption", "model": "m", "dataset": "d", "clean_error": 24.0,
              "errors": {"fog": {"1": 30.0}}, "ce": {"fog": 120.5}, "mce": 120.5, "relative_mce": 150.0,
              "complete": False, "missing": []}


@pytest.mark.parametrize("kind, change, field", [
    ("robustness", lambda d: d["models"]["m"].update(clean_top1=150.0), "models.m.clean_top1 is 150.0"),
    ("robustness", lambda d: d["models"]["m"]["deltas"]["0.5"].update(mean=-1.0), "models.m.deltas.0.5.mean is -1.0"),
    ("corruption", lambda d: d.update(clean_error=100.5), "clean_error is 100.5"),
    ("corruption", lambda d: d["errors"]["fog"].update({"1": 101.0}), "errors.fog.1 is 101.0"),
])
def test_a_percentage_outside_0_100_is_refused(tmp_path, kind, change, field):
    data = json.loads(json.dumps({"robustness": ROBUSTNESS, "corruption": CORRUPTION}[kind]))
    assert load_results([write(tmp_path, data)])[0].data == data  # as written: accepted (mCE 120.5 included)
    change(data)
    with pytest.raises(ValueError, match=rf"{field}, not a percentage in \[0, 100\]"):
        load_results([write(tmp_path, data)])
