"""Plant bugs one at a time (exact string replacements listed in a JSON file), run each one's tests, say whether
a test caught it, and put the file back: ``python tests/plants/plant.py tests/plants/fresh.json [--also TEST ...]``
(``--also`` adds test files to every plant's). Run it on a clean tree, and commit nothing while it runs."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_plant(plant: dict, also: list) -> bool:
    """True when the plant's tests fail with it in place (caught); the file is restored either way."""
    path = ROOT / plant["file"]
    text = path.read_text()
    if text.count(plant["old"]) != 1:
        raise SystemExit(f"{plant['id']}: the text to replace is not in {plant['file']} exactly once")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    path.write_text(text.replace(plant["old"], plant["new"]))
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *plant["tests"], *also],
                                cwd=ROOT, env=env, capture_output=True, text=True)
    finally:
        path.write_text(text)
    summary = [line for line in result.stdout.splitlines() if line.startswith("FAILED") or " passed" in line][-2:]
    print(plant["id"], "CAUGHT" if result.returncode else "MISSED", summary, flush=True)
    return result.returncode != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("plants")
    parser.add_argument("--also", nargs="*", default=[])
    args = parser.parse_args()
    plants = json.loads(Path(args.plants).read_text())
    caught = sum(run_plant(plant, args.also) for plant in plants)
    print(f"{caught}/{len(plants)} caught")


if __name__ == "__main__":
    main()
