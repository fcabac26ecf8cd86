"""Do two runs say the same thing about every neuron? For checking that a refactor changed no output.

    python -m tests.support.compare_runs RUN_A RUN_B

Compares the ``neurons/`` tables row by row (layer, neuron): status, label, labels, captions, top
images (ids, and activations to a relative 1e-4), crops, and every candidate (concept, scores,
images, refusals, mean activation, sub-phrase flag). Faithfulness scores (``dnd score``) judge a
description rather than make it, so they are left out: a run scored and one not scored compare equal.
Prints one JSON line with the neurons compared, the differences found (the first 20 named) and exits 1
when there is any.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _plain(value: Any) -> Any:
    """Arrow/numpy values as plain Python (lists, dicts, floats), without faithfulness scores."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "faithfulness"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


FIELDS = ("status", "label", "labels", "captions", "top_images", "crops", "candidates", "nan_images")


def compare(run_a: str, run_b: str) -> dict[str, Any]:
    from dnd.results import Results

    a = {(r["layer"], int(r["neuron"])): r for r in Results(run_a).neurons.to_dict("records")}
    b = {(r["layer"], int(r["neuron"])): r for r in Results(run_b).neurons.to_dict("records")}
    differences = [f"{key}: only in {run_a if key in a else run_b}" for key in sorted(set(a) ^ set(b))]
    for key in sorted(set(a) & set(b)):
        for name in FIELDS:
            left, right = _plain(a[key].get(name)), _plain(b[key].get(name))
            if not _close(left, right):
                differences.append(f"{key} {name}: {str(left)[:160]} != {str(right)[:160]}")
    return {"neurons": len(set(a) & set(b)), "differences": len(differences), "first": differences[:20]}


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    report = compare(sys.argv[1], sys.argv[2])
    print(json.dumps(report))
    return 1 if report["differences"] else 0


if __name__ == "__main__":
    sys.exit(main())
