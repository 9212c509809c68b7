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
    assert rec["config"]["groups"] == {g: {"acc": accs[g], "n": 2, "weight": 2.0} for g in sorted(accs)}
    assert rec["metrics"]["worst_group_acc"] == min(accs.values())
    # equal training groups (2 each) and equal test groups: the WILDS average is the plain one
    assert rec["metrics"]["adj_acc_avg"] == pytest.approx(rec["metrics"]["acc1"])
    assert rec["metrics"]["group_acc_gap"] == pytest.approx(rec["metrics"]["adj_acc_avg"] - min(accs.values()))
    assert rec["task"]["headline"] == "adj_acc_avg" and rec["config"]["group_average"] == "adj_acc_avg"
    low, high = rec["intervals"]["worst_group_acc"]
    assert low <= rec["metrics"]["worst_group_acc"] <= high
    board = cli("leaderboard", str(out), "--format", "markdown")  # a peer benchmark: the side-by-side table
    assert (
        board.returncode == 0 and "background reliance" in board.stdout and "Waterbirds worst-group gap" in board.stdout
    )
    site = cli("report", str(out), "--out", str(tmp_path / "site"))
    assert site.returncode == 0, site.stderr
    assert "Waterbirds worst-group gap" in (tmp_path / "site" / "index.html").read_text()


# An image is its mean colour; "landbird" prompts point red, "waterbird" prompts blue: a red image is called a
# landbird, a blue one a waterbird, whatever its group.
TWO_COLOURS = """
    import torch
    import torchvision.transforms.functional as TF

    class TwoColours:
        name = "two-colours"
        family = "toy"

        def preprocess(self, image):
            return TF.to_tensor(image.convert("RGB").resize((8, 8)))

        def encode_images(self, pixels):
            return pixels.mean(dim=(2, 3))[:, [0, 2]]

        def encode_texts(self, texts):
            return torch.tensor([[1.0, 0.0] if "landbird" in t else [0.0, 1.0] for t in texts])

    def build(device="cpu", precision="fp32"):
        return TwoColours()
"""


def make_unequal_waterbirds(root: Path) -> Path:
    """The release's layout with unequal groups: training sizes 6 / 1 / 1 / 2 (landbird on land, landbird on water,
    waterbird on land, waterbird on water, like the release's 3498 / 184 / 56 / 1057); test groups 4 / 4 / 2 / 2 with
    3, 2, 0 and 2 right (red images are called landbirds, blue ones waterbirds)."""
    red, blue = (230, 20, 20), (20, 20, 230)
    groups = {  # (y, place): (species, training size, test images' colours)
        (0, 0): ("026.Bronzed_Cowbird", 6, [red, red, red, blue]),
        (0, 1): ("026.Bronzed_Cowbird", 1, [red, red, blue, blue]),
        (1, 0): ("001.Black_footed_Albatross", 1, [red, red]),
        (1, 1): ("001.Black_footed_Albatross", 2, [blue, blue]),
    }
    folder = root / "waterbird_complete95_forest2water2"
    lines, img_id = [HEADER], 0
    for (y, place), (species, n_train, colours) in groups.items():
        (folder / species).mkdir(parents=True, exist_ok=True)
        for split, colour in [(0, blue)] * n_train + [(1, red)] + [(2, c) for c in colours]:
            img_id += 1
            name = f"{species}/{species.split('.', 1)[1]}_{img_id:04d}_{y}{place}.jpg"
            make_image(colour, seed=img_id).save(folder / name)
            bg = "/o/ocean/00002178.jpg" if place else "/b/bamboo_forest/00000131.jpg"
            lines.append(f"{img_id},{name},{y},{split},{place},{bg}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_both_averages_by_hand_on_unequal_training_groups(tmp_path):
    """acc1 = 7 / 12 (every test image once); adj_acc_avg = (6 x 3/4 + 1 x 2/4 + 1 x 0 + 2 x 1) / 10 = 0.7 (WILDS:
    group accuracies weighted by the training sizes); the gap is taken from adj_acc_avg: 0.7 - 0."""
    import textwrap

    data, out = make_unequal_waterbirds(tmp_path / "data"), tmp_path / "out"
    (tmp_path / "two_colours.py").write_text(textwrap.dedent(TWO_COLOURS))
    model = f"custom:{tmp_path / 'two_colours.py'}:build"
    args = ["--data-dir", str(data), "--output-dir", str(out), "--workers", "0", "--attribution", "none"]
    r = cli("run", "--models", model, "--tasks", "waterbirds/test", *args)
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    metrics = rec["metrics"]
    assert metrics["acc1"] == pytest.approx(7 / 12) and metrics["adj_acc_avg"] == pytest.approx(0.7)
    assert metrics["worst_group_acc"] == 0.0 and metrics["group_acc_gap"] == pytest.approx(0.7)
    assert rec["config"]["groups"]["landbird on land"] == {"acc": 0.75, "n": 4, "weight": 6.0}
    low, high = rec["intervals"]["adj_acc_avg"]
    assert low <= 0.7 <= high
    assert validation.validate(rec) == []


def test_the_release_s_training_sizes_are_wilds_weights(tmp_path):
    """A metadata.csv with the release's training split (3498 / 184 / 56 / 1057) gives WILDS's constants, and
    adj_acc_avg is WILDS's formula for any group accuracies."""
    from covar_harness_tasks.waterbirds import training_group_sizes

    sizes = {(0, 0): 3498, (0, 1): 184, (1, 0): 56, (1, 1): 1057}
    lines = [HEADER] + [
        f"{i},x/{i}.jpg,{y},0,{place},p.jpg"
        for i, (y, place) in enumerate(g for g, n in sizes.items() for _ in range(n))
    ]
    (tmp_path / "metadata.csv").write_text("\n".join([*lines, "9999,x/t.jpg,1,2,0,p.jpg"]) + "\n")
    weights = training_group_sizes(tmp_path / "metadata.csv")
    assert weights == {
        "landbird on land": 3498,
        "landbird on water": 184,
        "waterbird on land": 56,
        "waterbird on water": 1057,
    }
    acc = {"landbird on land": 0.9, "landbird on water": 0.6, "waterbird on land": 0.3, "waterbird on water": 0.8}
    correct, groups = [], []
    for g, a in acc.items():  # 10 test images per group, a x 10 of them right
        correct += [True] * round(10 * a) + [False] * (10 - round(10 * a))
        groups += [g] * 10
    metrics, _ = group_summary(correct, groups, weights)
    wilds = (0.9 * 3498 + 0.6 * 184 + 0.3 * 56 + 0.8 * 1057) / (3498 + 184 + 56 + 1057)
    assert metrics["adj_acc_avg"] == pytest.approx(wilds) and metrics["group_acc_gap"] == pytest.approx(wilds - 0.3)


def test_one_group_alone_has_no_worst_group():
    """A CounterAnimals half names one group: no worst_group_acc / group_acc_gap (they would just repeat acc1)."""
    assert group_summary([True, False, True], ["counter"] * 3) == ({}, {})
    assert group_intervals([True, False, True], ["counter"] * 3) == {}


def test_missing_data_says_where_to_get_it(tmp_path):
    where = cli("data", "where", "waterbirds/test", "--data-dir", str(tmp_path))
    assert "waterbirds/test: missing" in where.stdout
    assert "waterbird_complete95_forest2water2.tar.gz" in where.stdout
    make_waterbirds(tmp_path)
    first_test = "001.Black_footed_Albatross/Black_footed_Albatross_0017_00.jpg"  # ids 17-24 are split 2
    (tmp_path / "waterbird_complete95_forest2water2" / first_test).unlink()
    again = cli("data", "where", "waterbirds/test", "--data-dir", str(tmp_path))
    assert "missing" in again.stdout and "unpack the whole release" in again.stdout
