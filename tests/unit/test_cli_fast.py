"""`import dnd` and `dnd --help` must not pull in torch, Ray or the model libraries."""

import subprocess
import sys


def test_import_dnd_loads_no_heavy_library():
    code = (
        "import sys, dnd, dnd.cli, dnd.config;"
        "heavy = [m for m in ('torch', 'ray', 'transformers', 'diffusers', 'cv2') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "dnd.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("dissect", "layers", "show"):
        assert command in out.stdout


def test_bad_config_is_one_line_not_a_traceback(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("target: {model: 'torchvision:resnet18'}\nlayers: [fc]\nprobe: {sources: [{uri: x}]}\nstep1: {top_K: 3}\n")
    out = subprocess.run([sys.executable, "-m", "dnd.cli", "dissect", str(path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "step1.top_K: unknown key" in out.stderr
