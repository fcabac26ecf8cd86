"""Print the README's two set-up commands, one a line, as a newcomer copies them (comments cut).

CI runs exactly these lines, so the README cannot drift from what CI proves."""

import re
import sys
from pathlib import Path


def setup_commands(readme: Path) -> list[str]:
    text = readme.read_text(encoding="utf-8")
    found = re.search(r"```bash\n(.*?)```", text, re.S)
    if found is None:
        raise SystemExit(f"{readme}: no ```bash block holding the set-up commands")
    lines = [line.split("  #")[0].strip() for line in found.group(1).splitlines() if line.strip()]
    if len(lines) != 2:
        raise SystemExit(f"{readme}: the first bash block must hold exactly two commands, found {lines}")
    return lines


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    sys.stdout.write("\n".join(setup_commands(root / "README.md")) + "\n")
