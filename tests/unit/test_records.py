"""The neurons table is written from typed records: what each stage leaves unset reads as null, not
as a made-up zero, and a row's warnings and failures keep what an earlier stage said."""

import pyarrow as pa

from dnd.records import Candidate, Caption, NeuronCrop, NeuronRow, TopImage, neurons_schema, neurons_table


def test_a_row_after_step_2_only_has_null_scores_and_no_sub_phrase_flag():
    row = NeuronRow("layer4", 7, top_images=[TopImage("aa", 2.5, False)],
                    captions=[Caption("aa", "a red car")], candidates=[Candidate("red"), Candidate("car")])
    table = neurons_table([row])
    assert table.schema == neurons_schema()
    written = table.to_pylist()[0]
    assert written["layer"] == "layer4" and written["neuron"] == 7
    assert written["label"] is None and written["labels"] == []
    red = written["candidates"][0]
    # Step 3 did not run: no score, no mean activation and no sub-phrase verdict were computed.
    assert red == {"concept": "red", "score": None, "scores": None, "images": 0, "mean_activation": None,
                   "sub_phrase": None, "refused": None, "faithfulness": None}
    assert written["top_images"] == [{"image_id": "aa", "activation": 2.5, "is_crop": False, "parent_id": "",
                                      "box": []}]
    assert written["captions"] == [{"image_id": "aa", "caption": "a red car"}]


def test_crops_and_scored_candidates_keep_their_values_and_order():
    scores = {"mean": 0.5, "topk_squared": 0.25, "image_products": None, "topk_squared_image_products": None}
    row = NeuronRow(
        "conv", 3,
        top_images=[TopImage("c1", 1.0, True, "p1", [0, 0, 16, 16]), TopImage("p1", 0.5, False)],
        crops=[NeuronCrop("c1", "p1", [0, 0, 16, 16], 1.0)],
        candidates=[Candidate("red circle", 0.5, scores, 10, 0.75, False, None),
                    Candidate("circle", None, dict.fromkeys(scores), 9, 0.5, True, "blocked once")],
        label="red circle", labels=["red circle"],
    )
    written = neurons_table([row, NeuronRow("conv", 4)]).to_pylist()
    assert [r["neuron"] for r in written] == [3, 4]
    first = written[0]
    assert [t["is_crop"] for t in first["top_images"]] == [True, False]
    assert first["top_images"][0]["box"] == [0, 0, 16, 16]
    assert first["crops"][0]["parent_id"] == "p1"
    assert [c["concept"] for c in first["candidates"]] == ["red circle", "circle"]
    assert first["candidates"][0]["scores"] == scores
    assert first["candidates"][1]["sub_phrase"] is True and first["candidates"][1]["refused"] == "blocked once"
    assert pa.types.is_int32(neurons_schema().field("neuron").type)


def test_warnings_accumulate_and_a_failure_states_its_reason():
    row = NeuronRow("fc", 1)
    row.warn("warning: 1 of 5 summaries failed (HTTP 500)")
    row.warn("warning: no generated image could score the candidates; label is the first summary")
    assert row.status == "ok"
    assert row.error == ("warning: 1 of 5 summaries failed (HTTP 500); "
                         "warning: no generated image could score the candidates; label is the first summary")
    row.fail("no caption: every top image got an empty caption")
    assert row.status == "failed" and row.error == "no caption: every top image got an empty caption"
