"""Under torchrun (two gloo processes) the statistics methods of ``evaluate_adaptation`` give exactly
the single-process numbers and pass counts. The test runs this file as the torchrun worker (``__main__``)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_corruptions_data import CONFIG, make_imagenet_c, tiny_model
from timm_xbn.grid import evaluate_adaptation
from timm_xbn.corruptions import ImageNetCFolders
from timm_xbn.evaluation import init_distributed, is_main_process
from timm_xbn.evaluation.distributed import shutdown_distributed

METHODS = ["source", "norm", "prior:8", "batch"]


def run(root: Path, weights: Path) -> dict:
    model = tiny_model()
    model.load_state_dict(load_file(str(weights)))
    source = ImageNetCFolders(root, CONFIG, num_classes=3, batch_size=4, workers=0)  # 12 images: 3 batches, 2 + 1 per rank
    return evaluate_adaptation({"bn": model.eval()}, METHODS, source)


@pytest.mark.distributed
def test_two_gloo_processes_equal_one_process_for_the_statistics_methods(image_folder, tmp_path):
    clean = image_folder("clean", classes=3, per_class=4, size=32, ext="PNG")
    root = make_imagenet_c(clean, tmp_path / "imagenet-c", corruptions=("fog",), severities=(3, 5))
    save_file(tiny_model(fit=clean).state_dict(), str(tmp_path / "bn.safetensors"))
    single = run(root, tmp_path / "bn.safetensors")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
         str(root), str(tmp_path / "bn.safetensors"), str(tmp_path / "ddp.json")],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    for key, entry in single["results"]["entries"].items():
        assert ddp["results"]["entries"][key]["runs"] == entry["runs"], key
    norm = single["results"]["entries"]["bn | norm"]["runs"]["fog/5"]
    assert norm["forward"] == 2 * norm["count"] == 24  # the calibration pass counted on both ranks
    errors = {m: single["results"]["entries"][f"bn | {m}"]["runs"]["fog/5"]["top1_error"] for m in METHODS}
    assert len(set(errors.values())) > 1  # not vacuous: the methods differ


if __name__ == "__main__":  # torchrun worker
    torch.set_num_threads(1)
    data_root, weights, out_file = (Path(a) for a in sys.argv[1:4])
    init_distributed("cpu")
    results = run(data_root, weights)
    if is_main_process():
        out_file.write_text(json.dumps(results))
    shutdown_distributed()
