"""Waterbirds (test split) on a tiny copy laid out exactly as the release unpacks
(``waterbird_complete95_forest2water2/metadata.csv`` + ``<NNN.Species>/<image>.jpg``), and the worst-group and
average accuracy (harness/covar_harness/run/group_metrics.py) checked by hand (issue 18 items 1, 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covar_harness.catalog.registry import UsageError
from covar_harness.results import validation
from covar_harness.run.group_metrics import add_group_metrics, group_accuracies, group_intervals, group_summary
from helpers import make_image
from helpers import run_cli_inprocess as cli

HEADER = "img_id,img_filename,y,split,place,place_filename"
# (species folder, y, place): both birds on both places, in every split
BIRDS = [
    ("001.Black_footed_Albatross", 1, 1),
    ("001.Black_footed_Albatross", 1, 0),
    ("026.Bronzed_Cowbird", 0, 0),
    ("026.Bronzed_Cowbird", 0, 1),
]


def make_waterbirds(root: Path, per_group: int = 2) -> Path:
    folder = root / "waterbird_complete95_forest2water2"
    lines, img_id = [HEADER], 0
    for split in (0, 1, 2):
        for g, (species, y, place) in enumerate(BIRDS):
            for j in range(per_group):
                img_id += 1
                name = f"{species}/{species.split('.', 1)[1]}_{img_id:04d}_{g}{j}.jpg"
                (folder / species).mkdir(parents=True, exist_ok=True)
                make_image((60 * g, 200 - 40 * place, 90 * y), seed=img_id).save(folder / name)
                bg = "/o/ocean/00002178.jpg" if place else "/b/bamboo_forest/00000131.jpg"
                lines.append(f"{img_id},{name},{y},{split},{place},{bg}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_group_metrics_by_hand():
    correct = [True, True, False, True, False, False, True, True, True]
    groups = ["a", "a", "a", "b", "b", "c", "c", "c", None]  # the last sample names no group
    per = group_accuracies(correct, groups)
    assert per == {"a": {"acc": 2 / 3, "n": 3}, "b": {"acc": 0.5, "n": 2}, "c": {"acc": 2 / 3, "n": 3}}
    metrics, per_group = group_summary(correct, groups)
    assert metrics["worst_group_acc"] == 0.5
    assert metrics["group_acc_gap"] == pytest.approx(6 / 9 - 0.5)  # average over all 9 samples minus the worst
    assert per_group == per
    assert group_summary([True, False], [None, None]) == ({}, {})
    record: dict = {"metrics": {"acc1": 0.5}, "config": {}}
    add_group_metrics(record, [True, False], [None, None])
    assert record == {"metrics": {"acc1": 0.5}, "config": {}}  # no groups: nothing added
    with pytest.raises(ValueError):
        group_accuracies([True], ["a", "b"])


def test_group_intervals_stratified():
    # a group always right and one always wrong: every replicate has worst 0 and gap 0.5 - 0 (equal sizes)
    fixed = group_intervals([True] * 4 + [False] * 4, ["a"] * 4 + ["b"] * 4, seed=3)
    assert fixed == {"worst_group_acc": [0.0, 0.0], "group_acc_gap": [0.5, 0.5]}
    correct = [True, False, True, True, False, True, True, False, True, True]
    groups = ["a"] * 5 + ["b"] * 5
    spans = group_intervals(correct, groups, seed=0)
    for key in ("worst_group_acc", "group_acc_gap"):
        low, high = spans[key]
        assert 0.0 <= low < high <= 1.0  # two groups of five: the replicates vary
    assert group_intervals(correct, groups, seed=0) == spans  # seeded
    assert "group_acc_gap" not in group_intervals(correct, groups[:-1] + [None])  # a sample without a group
    record: dict = {"metrics": {}, "config": {}, "intervals": {"acc1": [0.1, 0.2]}}
    add_group_metrics(record, correct, groups)
    assert set(record["intervals"]) == {"acc1", "worst_group_acc", "group_acc_gap"}


def test_loader_reads_the_test_split_with_groups(tmp_path):
    from covar_harness_tasks.waterbirds import load_waterbirds

    make_waterbirds(tmp_path)
    ds = {"path": str(tmp_path / "waterbird_complete95_forest2water2"), "split": "test"}
    found = load_waterbirds(ds, tmp_path)
    assert len(found) == 8 and found.classnames == ["landbird", "waterbird"]
    assert {s.meta["group"] for s in found.samples} == {
        "waterbird on water",
        "waterbird on land",
        "landbird on land",
        "landbird on water",
    }
    first = found.samples[0]
    assert first.label == 1 and first.meta["group"] == "waterbird on water" and found.open_image(0).size == (40, 40)
    assert len(load_waterbirds({**ds, "path": str(tmp_path)}, tmp_path)) == 8  # the folder holding the release
    assert len(load_waterbirds({**ds, "split": "train"}, tmp_path)) == 8
    with pytest.raises(UsageError, match="split"):
        load_waterbirds({**ds, "split": "dev"}, tmp_path)
    (tmp_path / "waterbird_complete95_forest2water2" / "metadata.csv").write_text("img_id,y\n1,0\n")
    with pytest.raises(UsageError, match="missing img_filename"):
        load_waterbirds(ds, tmp_path)


def test_run_records_worst_group_and_validates(openclip_dir, tmp_path):
    data, out = make_waterbirds(tmp_path / "data"), tmp_path / "out"
    args = ["--data-dir", str(data), "--output-dir", str(out), "--workers", "0", "--attribution", "none"]
    r = cli(
        "run", "--models", f"openclip:local-dir:{openclip_dir}", "--tasks", "waterbirds/test", *args, "--log-samples"
    )
    assert r.returncode == 0, r.stderr
    (path,) = [p for p in out.rglob("*.json")]
    rec = json.loads(path.read_text())
    assert validation.validate(rec) == []
    assert rec["task"]["n_samples"] == 8 and rec["task"]["label_mapping"] == "by_name"
    rows = [json.loads(line) for line in next(out.rglob("*.samples.jsonl")).read_text().splitlines()]
    by_group: dict[str, list[bool]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row["correct"])
    accs = {g: sum(v) / len(v) for g, v in by_group.items()}
    assert rec["config"]["groups"] == {g: {"acc": accs[g], "n": 2} for g in sorted(accs)}
    assert rec["metrics"]["worst_group_acc"] == min(accs.values())
    assert rec["metrics"]["group_acc_gap"] == pytest.approx(rec["metrics"]["acc1"] - min(accs.values()))
    low, high = rec["intervals"]["worst_group_acc"]
    assert low <= rec["metrics"]["worst_group_acc"] <= high
    board = cli("leaderboard", str(out), "--format", "markdown")  # a peer benchmark: the side-by-side table
    assert (
        board.returncode == 0 and "background reliance" in board.stdout and "Waterbirds worst-group gap" in board.stdout
    )
    site = cli("report", str(out), "--out", str(tmp_path / "site"))
    assert site.returncode == 0, site.stderr
    assert "Waterbirds worst-group gap" in (tmp_path / "site" / "index.html").read_text()


def test_missing_data_says_where_to_get_it(tmp_path):
    where = cli("data", "where", "waterbirds/test", "--data-dir", str(tmp_path))
    assert "waterbirds/test: missing" in where.stdout
    assert "waterbird_complete95_forest2water2.tar.gz" in where.stdout
    make_waterbirds(tmp_path)
    first_test = "001.Black_footed_Albatross/Black_footed_Albatross_0017_00.jpg"  # ids 17-24 are split 2
    (tmp_path / "waterbird_complete95_forest2water2" / first_test).unlink()
    again = cli("data", "where", "waterbirds/test", "--data-dir", str(tmp_path))
    assert "missing" in again.stdout and "unpack the whole release" in again.stdout
