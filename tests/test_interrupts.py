"""utils.interrupts: the first SIGINT / SIGTERM asks a run to stop, the second ends it at once; xbn-train
stops after saving and continues with --resume auto."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from timm_xbn.training import build_args, train
from timm_xbn.utils.interrupts import EXIT_CODE, Interrupted, interruptible

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

SECOND_SIGNAL = """
from timm_xbn.utils.interrupts import interruptible
import time
with interruptible(raise_now=False) as stop:
    print("ready", flush=True)
    while not stop:
        time.sleep(0.01)
    print("stop requested", flush=True)
    while True:
        time.sleep(0.01)
print("never here")
"""


def test_first_signal_asks_to_stop_and_the_second_ends_at_once():
    proc = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == "stop requested\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == EXIT_CODE and proc.stdout.read() == ""


def test_interruptible_raises_on_the_first_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted):
        with interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode; the sleep is only a fallback
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


TINY = [  # 32 groups: 64 would normalize one value per group in layer4's bn2 (1x1 maps at 32 px)
    "--convert-from", "resnet26", "--groups", "32", "--model-kwargs", "layers=[1,1,1,1]", "channels=[8,16,32,64]", "stem_width=8",
    "--num-classes", "3", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
    "--epochs", "20", "--lr", "0.02",
]


def test_xbn_train_saves_then_stops_on_ctrl_c_and_resumes_to_the_uninterrupted_weights(image_folder, tmp_path):
    """A real SIGINT once training has started: exit 130, one line naming the folder and how to continue;
    --resume auto then ends with the weights of a run that was never interrupted."""
    data = image_folder("data/train", classes=3, per_class=8, size=32, seed=0).parent
    image_folder("data/validation", classes=3, per_class=4, size=32, seed=1)
    common = ["--data-dir", str(data), *TINY, "--output", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "timm_xbn.training", *common, "--experiment", "cut"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    while not line.startswith("training "):
        line = proc.stderr.readline()  # rich's console: stderr
        assert line or proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate()[1]
    assert proc.returncode == EXIT_CODE, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted after ") and last.endswith(
        f"saved in {tmp_path / 'cut'}; continue with --experiment cut --resume auto"), stderr
    assert "Traceback" not in stderr and list((tmp_path / "cut").glob("*.pth.tar"))
    train(build_args(argv=common + ["--experiment", "cut", "--resume", "auto", "--debug-rank-weights", str(tmp_path / "w_cut")]))
    train(build_args(argv=common + ["--experiment", "full", "--debug-rank-weights", str(tmp_path / "w_full")]))
    full, resumed = load_file(tmp_path / "w_full" / "rank0.safetensors"), load_file(tmp_path / "w_cut" / "rank0.safetensors")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
