"""The README's promises: its first two commands, and a config reference that matches the code."""

import subprocess
import sys
from pathlib import Path

from dnd.config import config_reference

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_config_reference_in_readme_is_current():
    assert config_reference() in README, "regenerate the README's reference with `dnd config-reference`"


def test_two_setup_commands_at_the_top():
    block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    assert block[0].startswith("pip install -e . && dnd demo")
    assert block[1].startswith('pip install -e ".[test]" && python -m pytest')
    # CI runs exactly what its reader takes from the README, in a fresh virtual environment.
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / ".ci" / "readme_commands.py")], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines() == ['pip install -e . && dnd demo', 'pip install -e ".[test]" && python -m pytest']
    ci = (root / ".ci" / "run").read_text()
    assert "python3 .ci/readme_commands.py" in ci and "python3 -m venv" in ci
