"""timm_xbn.utils.provenance: the record written into each kind of docs file reads back, replaces an older one,
keeps the file's content, and names this checkout's commit."""
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from timm_xbn.utils.provenance import provenance, read_provenance, script_command, stamp

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("name, content, first_line", [
    ("t.csv", "a,b\n1,2\n", "# Written by `cmd one` at commit abc on box."),
    ("t.txt", "summary\n", "# Written by `cmd one` at commit abc on box."),
    ("t.md", "| a |\n|---|\n", "Written by `cmd one` at commit abc on box."),
])
def test_text_files_get_a_first_line_that_a_second_stamp_replaces(tmp_path, name, content, first_line):
    path = tmp_path / name
    path.write_text(content)
    stamp(path, {"command": "cmd zero", "commit": "000", "machine": "old"})
    stamp(path, {"command": "cmd one", "commit": "abc", "machine": "box"})
    assert path.read_text() == first_line + "\n" + content
    assert read_provenance(path) == {"command": "cmd one", "commit": "abc", "machine": "box"}


def test_json_and_png_keep_their_content(tmp_path):
    prov = {"command": "python x.py", "commit": "abc", "machine": "box"}
    (tmp_path / "r.json").write_text(json.dumps({"rows": [1, 2], "provenance": {"command": "old"}}))
    stamp(tmp_path / "r.json", prov)
    assert json.loads((tmp_path / "r.json").read_text()) == {"provenance": prov, "rows": [1, 2]}
    Image.new("RGB", (4, 3), (10, 20, 30)).save(tmp_path / "p.png")
    stamp(tmp_path / "p.png", prov)
    with Image.open(tmp_path / "p.png") as image:
        assert image.size == (4, 3) and image.getpixel((1, 1)) == (10, 20, 30)
    assert read_provenance(tmp_path / "p.png") == prov
    with pytest.raises(ValueError, match="no provenance format"):
        stamp(tmp_path / "p.pdf", prov)


def test_the_record_names_this_checkout_and_the_script():
    prov = provenance("some command")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert prov["command"] == "some command" and prov["commit"].removesuffix("+dirty") == head and prov["machine"]
    assert script_command(ROOT / "benchmarks" / "tta_demo.py", ["--tiny", "-o", "a b"]).endswith(
        "benchmarks/tta_demo.py --tiny -o 'a b'")

