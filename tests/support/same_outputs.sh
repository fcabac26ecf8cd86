#!/usr/bin/env bash
# same_outputs.sh BASE NEW: do two commits write the same neurons/ tables for `dnd demo` (method dnd)
# and examples/smoke.yaml? Each side runs from its own git worktree (PYTHONPATH), then
# tests/support/compare_runs.py compares the tables neuron by neuron and prints one JSON line each.
# Backends are found through the installed package's dnd.backends entry points, so both commits
# must declare the modules the installed pyproject.toml names (reinstall with `pip install -e .
# --no-deps` from a checkout of either if they differ).
set -u
repo=$(git rev-parse --show-toplevel)
out=${OUT:-/tmp/dnd-same-outputs}
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1
rm -rf "$out" && mkdir -p "$out"
for side in base new; do git -C "$repo" worktree remove --force "$out-wt-$side" 2>/dev/null; done
git -C "$repo" worktree add -f "$out-wt-base" "$1" -q --detach
git -C "$repo" worktree add -f "$out-wt-new" "$2" -q --detach
for side in base new; do
    tree="$out-wt-$side"
    (cd /tmp && PYTHONPATH="$tree/engine" python -c "
from dnd.synthetic.demo import run_demo
run_demo('$out/$side-demo', method='dnd', log=lambda m: None)
" && PYTHONPATH="$tree/engine" python -m dnd.cli dissect "$tree/examples/smoke.yaml" --out "$out/$side-smoke" \
        > /dev/null 2> "$out/$side-smoke.err") || { echo "$side run failed; see $out/$side-smoke.err" >&2; exit 1; }
done
cd "$repo" && python -m tests.support.compare_runs "$out/base-demo" "$out/new-demo" \
    && python -m tests.support.compare_runs "$out/base-smoke" "$out/new-smoke"
