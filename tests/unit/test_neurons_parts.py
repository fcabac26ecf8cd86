"""``neurons/`` is written in parts streamed from the rows (no part spans two layers, none holds more
than ``part_rows``), and every reader — Results, dnd show, dnd score's rewrite — gets all of them back
in the order and with the content one table would have had."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from dnd.records import Candidate, Caption, NeuronRow, TopImage, neurons_table
from dnd.store.layout import RunLayout
from dnd.store.neurons import neuron_parts, part_slices, read_neurons, rewrite_neurons, write_neurons


def make_rows(sizes: dict[str, int]) -> list[NeuronRow]:
    rows = []
    for layer, count in sizes.items():
        for neuron in range(count):
            rows.append(NeuronRow(
                layer, neuron * 3, top_images=[TopImage(f"{layer}-{neuron}", float(neuron), False)],
                captions=[Caption(f"{layer}-{neuron}", f"caption {neuron}")],
                candidates=[Candidate(f"concept {neuron % 4}"), Candidate(f"concept {(neuron + 1) % 4}")],
                label=f"concept {neuron % 4}", labels=[f"concept {neuron % 4}"],
            ))
    rows[1].fail("no image gave this neuron a finite activation")
    return rows


def test_a_layer_is_cut_into_near_equal_parts_and_no_part_spans_two_layers():
    assert part_slices(["a"] * 3072 + ["b"] * 3072, 2000) == [(0, 1536), (1536, 3072), (3072, 4608), (4608, 6144)]
    assert part_slices(["a"] * 5 + ["b"] + ["a"] * 2, 2) == [(0, 1), (1, 3), (3, 5), (5, 6), (6, 8)]
    assert part_slices(["a"] * 4, 2000) == [(0, 4)]
    assert part_slices([], 10) == []
    with pytest.raises(ValueError):
        part_slices(["a"], 0)


def test_parts_read_back_as_the_one_table_in_row_order(tmp_path):
    rows = make_rows({"layer3": 7, "fc": 5})
    layout = RunLayout(str(tmp_path / "run"))
    write_neurons(layout, rows, part_rows=3)
    parts = neuron_parts(layout)
    # layer3's 7 rows in 3 parts (2, 2, 3), fc's 5 in 2 (2, 3): each read on its own is one layer.
    assert [p.rsplit("/", 1)[-1] for p in parts] == [f"part-{n:05d}.parquet" for n in range(5)]
    sizes = [pq.read_metadata(p).num_rows for p in parts]
    assert sizes == [2, 2, 3, 2, 3]
    assert [set(pq.read_table(p, columns=["layer"])["layer"].to_pylist()) for p in parts] == \
        [{"layer3"}] * 3 + [{"fc"}] * 2
    assert read_neurons(layout).to_pylist() == neurons_table(rows).to_pylist()
    from dnd.results import Results

    frame = Results(str(tmp_path / "run")).neurons
    assert list(zip(frame["layer"], frame["neuron"])) == [(r.layer, r.neuron) for r in rows]
    assert list(frame["status"]).count("failed") == 1


def test_writing_again_replaces_every_old_part(tmp_path):
    layout = RunLayout(str(tmp_path / "run"))
    write_neurons(layout, make_rows({"a": 9}), part_rows=2)
    write_neurons(layout, make_rows({"b": 3}), part_rows=2)
    assert len(neuron_parts(layout)) == 2
    assert read_neurons(layout)["layer"].to_pylist() == ["b"] * 3
    write_neurons(layout, [], part_rows=2)  # no rows: one empty part, a table of no neurons
    assert len(neuron_parts(layout)) == 1 and read_neurons(layout).num_rows == 0


def test_a_rewrite_keeps_every_part_and_a_crash_between_parts_keeps_every_row_once(tmp_path):
    rows = make_rows({"layer3": 6, "fc": 4})
    layout = RunLayout(str(tmp_path / "run"))
    write_neurons(layout, rows, part_rows=3)
    before = neuron_parts(layout)

    def mark(part):
        for row in part:
            row["error"] = "rescored"

    assert rewrite_neurons(layout, mark) == len(rows)
    assert neuron_parts(layout) == before
    assert read_neurons(layout)["error"].to_pylist() == ["rescored"] * len(rows)

    seen = []

    def fail_on_second(part):
        seen.append(len(part))
        if len(seen) == 2:
            raise RuntimeError("killed")
        for row in part:
            row["error"] = "again"

    with pytest.raises(RuntimeError):
        rewrite_neurons(layout, fail_on_second)
    table = read_neurons(layout)
    assert list(zip(table["layer"].to_pylist(), table["neuron"].to_pylist())) == [(r.layer, r.neuron) for r in rows]
    assert table["error"].to_pylist() == ["again"] * seen[0] + ["rescored"] * (len(rows) - seen[0])


def test_dnd_show_prints_rows_of_every_part(tmp_path, capsys):
    from dnd.cli import main

    rows = make_rows({"layer3": 5, "fc": 4})
    write_neurons(RunLayout(str(tmp_path / "run")), rows, part_rows=2)
    assert main(["show", str(tmp_path / "run"), "--limit", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[:7]] == [[r.layer, str(r.neuron)] for r in rows[:7]]
    assert lines[7] == "... 2 more rows (--limit)"
    assert main(["show", str(tmp_path / "run"), "--layer", "fc", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [["fc", str(r.neuron)] for r in rows[5:8]]
    assert lines[3] == "... 1 more rows (--limit)"


def test_dnd_score_gives_every_part_the_figures_one_table_would_get(tmp_path, monkeypatch):
    """Scored part by part (one layer's matrix at a time) or as the single part of a run written
    before parts, every row and candidate gets the same faithfulness and the summary the same figures."""
    from dnd.config import FaithfulnessConfig, RunConfig
    from dnd.faithfulness import score as scoring
    from dnd.faithfulness.sources import ConceptVectors
    from dnd.records import LayerPlan
    from dnd.store.activations import ActivationWriter

    rng = np.random.default_rng(0)
    images = 40
    sizes = {"layer3": 7, "fc": 5}
    rows = make_rows(sizes)
    plans = [LayerPlan(layer, 100, [r.neuron for r in rows if r.layer == layer], False) for layer in sizes]
    activations = [rng.normal(size=(images, len(plan.neurons))).astype(np.float32) for plan in plans]

    class Fixed:
        def vectors(self, explanations, probe, context):
            soft = np.array([[(sum(map(ord, text)) + i) % 5 / 4 for i in range(images)] for text in explanations])
            return ConceptVectors(soft, soft >= 0.5, {"fixed": True})

    monkeypatch.setattr(scoring, "build_source", lambda spec, options: Fixed())
    config = RunConfig.model_validate({"target": {"model": "torchvision:resnet18"}, "layers": list(sizes),
                                       "probe": {"sources": [{"uri": "gen://shapes?n=4"}]}, "captioner": None})
    spec = FaithfulnessConfig.model_validate({"concepts": "fixed", "alpha": 0.2})
    results = {}
    for name in ("one", "parts"):
        layout = RunLayout(str(tmp_path / name))
        writer = ActivationWriter(layout, plans, "float32")
        writer.add([f"img{i}" for i in range(images)], [f"ref{i}" for i in range(images)], ["s"] * images, activations)
        writer.close()
        if name == "one":  # as runs were written before parts: one file, both layers
            layout.write_table(neurons_table(rows), "neurons", "part-00000.parquet")
        else:
            write_neurons(layout, rows, part_rows=2)
        summary = scoring.score_run(layout, config, spec, lambda message: None)
        summary.pop("seconds")
        results[name] = (read_neurons(layout).to_pylist(), summary, len(neuron_parts(layout)))
    (one, one_summary, one_parts), (parts, parts_summary, many_parts) = results["one"], results["parts"]
    assert (one_parts, many_parts) == (1, 7)
    assert parts == one and parts_summary == one_summary
    assert one_summary["neurons_scored"] == len(rows) and all(r["faithfulness"]["concepts"] == "fixed" for r in one)
