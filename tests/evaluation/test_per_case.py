"""Per-case volume metrics rows, summaries and CSV."""

import csv
import math

import numpy as np
import pytest

from jdiffseg.data.cases import CaseVolume
from jdiffseg.evaluation import per_case
from jdiffseg.scoring.surface import volume_metrics


def _volume(case, shift):
    truth = np.zeros((6, 6, 4), np.uint8)
    truth[1:4, 1:4, 1:3] = 2  # class index 2 (label value 4 in a BraTS-like declaration)
    truth[2, 2, 1] = 1
    pred = np.roll((truth > 0).astype(np.uint8), shift, axis=0)
    return CaseVolume(case, pred, truth, np.array([1.0, 1.0, 2.0]), np.eye(4), 4)


def test_rows_summary_and_csv(tmp_path):
    meta = {"label_values": [0, 1, 4], "target_values": [1, 4], "target": "whole",
            "class_names": ["background", "whole"]}
    structures = per_case.structures(meta)
    assert structures == {"whole": ((1,), (1, 2))}
    rows = [r for s in (0, 1) for r in per_case.case_rows(_volume(f"c{s}", s), structures)]
    assert rows[0]["dice"] == 1.0 and rows[0]["hd95"] == 0.0
    v = _volume("c1", 1)
    assert rows[1] == {
        "case": "c1",
        "structure": "whole",
        "slices": 4,
        **volume_metrics(v.prediction > 0, v.truth > 0, v.spacing),
    }
    rows.append({**rows[1], "case": "c2", "sensitivity": math.nan})
    summary = per_case.summarise(rows)["whole"]
    assert summary["dice"]["mean"] == pytest.approx((1 + 2 * rows[1]["dice"]) / 3)
    assert summary["sensitivity"]["n"] == 2  # the undefined value is left out
    assert summary["hd95"]["median"] == pytest.approx(rows[1]["hd95"])
    per_case.write_csv(tmp_path / "per_case.csv", rows)
    with open(tmp_path / "per_case.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["case"] for r in table] == ["c0", "c1", "c2"] and table[2]["sensitivity"] == "nan"
    assert float(table[1]["assd"]) == pytest.approx(rows[1]["assd"], rel=1e-5)


def test_label_maps_are_scored_per_class_and_region():
    meta = {"label_values": [0, 1, 2, 4], "target": "classes", "target_values": [1, 2, 4],
            "class_names": ["background", "necrosis", "oedema", "enhancing"],
            "regions": {"whole tumour": [1, 2, 4], "tumour core": [1, 4]}}
    structures = per_case.structures(meta)
    assert structures == {"necrosis": ((1,), (1,)), "oedema": ((2,), (2,)),
                          "enhancing": ((3,), (3,)), "whole tumour": ((1, 2, 3), (1, 2, 3)),
                          "tumour core": ((1, 3), (1, 3))}
    truth = np.zeros((6, 6, 4), np.uint8)
    truth[1:5, 1:5, 1:3] = 2
    truth[2:4, 2:4, 1:3] = 3
    pred = truth.copy()
    pred[pred == 3] = 1  # enhancing predicted as necrosis: whole tumour still exact
    volume = CaseVolume("c", pred, truth, np.ones(3), np.eye(4), 4)
    rows = {r["structure"]: r for r in per_case.case_rows(volume, structures)}
    assert rows["whole tumour"]["dice"] == 1.0 and rows["oedema"]["dice"] == 1.0
    assert rows["enhancing"]["dice"] == 0.0 and rows["necrosis"]["dice"] == 0.0
    assert rows["tumour core"]["dice"] == 1.0 and rows["tumour core"]["hd95"] == 0.0
