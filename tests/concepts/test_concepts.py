"""Concept naming (issue 27, docs/design.md section 11): banks, the per-cluster score, the driving background
cluster, the summaries and their nulls, and the step through ``run`` / ``explain`` / ``ls`` on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.concepts.banks import list_image_bank, read_vocabulary, resolve_bank
from covar_harness.concepts.naming import (
    ConceptRecord,
    cluster_concept_scores,
    driving_background_cluster,
    top_concepts,
)
from covar_harness.concepts.summary import class_association, concept_table, expected_agreement, summarise
from covar_harness.results import files as results
from helpers import make_covar, make_image, run_cli_inprocess


# ---- banks -------------------------------------------------------------------------------------------------------
def test_vocabulary_file_reads_concepts_and_sources(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# source: my survey\n# a comment\nsnow\n\n  polar   ice \nwatermark\n")
    concepts, source = read_vocabulary(path)
    assert concepts == ["snow", "polar ice", "watermark"] and source == "my survey"
    path.write_text("snow\nsnow\n")
    with pytest.raises(UsageError, match="twice"):
        read_vocabulary(path)
    path.write_text("snow\n")
    with pytest.raises(UsageError, match="at least two"):
        read_vocabulary(path)
    path.write_text("snow\nbad\u202ename\n")
    with pytest.raises(UsageError, match="unusable concept name"):
        read_vocabulary(path)


def test_shipped_banks_are_registered_and_cheap_to_resolve(tmp_path):
    catalog = load_catalog()
    assert {"visual-concepts", "covar-shapes-backgrounds"} <= set(catalog.concepts.names())
    text = resolve_bank("visual-concepts", catalog)
    assert text.kind == "text" and len(text.concepts) >= 150 and "Describable Textures" in text.source
    assert {"snow", "grass", "water", "watermark", "sand"} <= set(text.concepts)
    images = resolve_bank("covar-shapes-backgrounds", catalog, tmp_path)
    assert images.kind == "images" and len(images.concepts) == 10 and "snow" in images.concepts
    assert not (tmp_path / "concept-banks").exists()  # generated on first use (embedding), not when resolved
    with pytest.raises(UsageError, match="did you mean 'visual-concepts'"):
        resolve_bank("visual-concept", catalog)


def _image_bank(root: Path, colours: dict[str, tuple]) -> Path:
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for j in range(3):
            make_image(colour, seed=j).save(root / name / f"{j}.png")
    return root


def test_image_bank_folders_are_checked(tmp_path):
    root = _image_bank(tmp_path / "bank", {"red_thing": (255, 0, 0), "green": (0, 255, 0)})
    files = list_image_bank(root)
    assert list(files) == ["green", "red thing"] and all(len(v) == 3 for v in files.values())
    (root / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no image"):
        list_image_bank(root)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_bank(f"images:{tmp_path / 'missing'}")


def test_image_bank_is_the_normalised_mean_and_cached(tmp_path, openclip_dir):
    from covar_harness.models.specs import load_model
    from covar_harness.run.text_cache import store_for

    adapter = load_model(f"openclip:local-dir:{openclip_dir}")
    root = _image_bank(tmp_path / "bank", {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)})
    bank = resolve_bank(f"images:{root}")
    store = store_for("tiny", adapter, tmp_path / "cache", "fp32")
    emb = bank.embed(adapter, [], store)
    assert emb.shape[1] == 3 and torch.allclose(emb.norm(dim=0), torch.ones(3), atol=1e-5)
    from covar_harness.data.pixels import open_image_file

    with torch.no_grad():
        reds = F.normalize(
            adapter.encode_images(
                torch.stack([adapter.preprocess(open_image_file(p)) for p in bank.files["red"]])
            ).float(),
            dim=-1,
        )
    assert torch.allclose(emb[:, bank.concepts.index("red")], F.normalize(reds.mean(0), dim=0), atol=1e-5)

    def fail(_pixels):
        raise AssertionError("the cached bank must not be embedded again")

    adapter.encode_images = fail
    assert torch.equal(resolve_bank(f"images:{root}").embed(adapter, [], store), emb)


# ---- naming ------------------------------------------------------------------------------------------------------
def test_score_names_the_concept_a_cluster_carries():
    """Concepts along axes; the image holds concepts 0 and 1; cluster 0 carries concept 0, cluster 1 concept 1,
    cluster 2 was not removed (invalid): the probability drop names each cluster's own concept."""
    bank = torch.eye(6)[:, :4]  # (D, C)
    emb = F.normalize(bank[:, 0] + bank[:, 1], dim=0)[None]
    without = torch.stack([bank[:, 1], bank[:, 0], emb[0]])[None]  # removing cluster k leaves the other concept
    scores = cluster_concept_scores(emb, without, bank, temperature=10.0)
    assert scores.shape == (1, 3, 4) and torch.all(scores[0, 2] == 0)
    named = top_concepts(scores, torch.tensor([[True, True, False]]), ["a", "b", "c", "d"], 2)
    assert named[0][0][0][0] == "a" and named[0][1][0][0] == "b" and named[0][2] == []
    assert named[0][0][0][1] > 0 > float(scores[0, 0, 1])  # removing cluster 0 raises b's probability


def test_driving_background_cluster_is_the_most_important_background_one():
    assignments = [0, 0, 1, 1, 2, 2, 3, 3]
    fg = np.array([1, 1, 0, 0, 0, 0.2, 0, 0], dtype=float)  # cluster 0 is the object
    assert driving_background_cluster([0.9, 0.3, 0.5, -0.2], assignments, fg) == 2
    assert driving_background_cluster([0.9, -0.1, -0.3, 0.0], assignments, fg) is None  # none positive
    assert driving_background_cluster([0.9, 0.3, 0.5, 0.1], assignments, None) is None  # no mask


def _record(i: int, pred: int, driving_concept: str, others: list[str], unit: str | None = None) -> ConceptRecord:
    top = [[(driving_concept, 0.5)]] + [[(c, 0.1)] for c in others]
    return ConceptRecord(i, label=0, pred=pred, top=top, driving=0, bg_error=True, unit=unit)


def test_cluster_null_is_the_share_of_the_errors_clusters():
    records = [_record(0, 1, "snow", ["grass", "grass", "grass"]), _record(1, 2, "snow", ["snow"])]
    rows = concept_table(records, ["snow", "grass"], seed=0)
    assert rows[0]["concept"] == "snow" and rows[0]["count"] == 2 and rows[0]["share"] == 1.0
    assert rows[0]["null_share"] == pytest.approx((1 / 4 + 2 / 2) / 2)
    assert 0 < rows[0]["p_value"] <= 1


def test_class_association_separates_following_from_unrelated_concepts():
    vocab = [f"c{j}" for j in range(5)]
    rng = np.random.default_rng(0)
    follows = [_record(i, i % 5, f"c{i % 5}", ["c0"]) for i in range(100)]
    random = [_record(i, i % 5, f"c{int(rng.integers(5))}", ["c0"]) for i in range(100)]
    a, b = class_association(follows, vocab, seed=0), class_association(random, vocab, seed=0)
    assert a["agreement"] == 1.0 and a["null_mean"] < 0.5 and a["p_value"] < 0.01
    assert b["p_value"] > 0.05 and b["agreement"] < b["null_95"] + 0.05


def test_expected_agreement_null_is_exact():
    out = expected_agreement(["snow", "snow", "grass", "sand"], [0, 0, 1, 1], {0: "snow", 1: "sand"}, seed=0)
    assert out["share"] == 0.75 and out["n"] == 4
    assert out["null_mean"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)


def test_summary_counts_only_named_background_errors():
    records = [_record(0, 1, "snow", ["grass"]), _record(1, 1, "snow", ["grass"], unit=None)]
    records.append(ConceptRecord(2, 0, 1, [[("grass", 0.2)]], None, True))  # no driving cluster
    records.append(ConceptRecord(3, 0, 0, [[("grass", 0.2)]], 0, None))  # correct
    out = summarise(records, ["snow", "grass"], ["cat", "polar bear"], seed=0)
    assert (out["n_named"], out["n_bg_errors"], out["n_bg_errors_named"]) == (4, 3, 2)
    assert out["by_predicted_class"] == [{"class": "polar bear", "n": 2, "concept": "snow", "count": 2, "share": 1.0}]


def test_shapley_names_from_the_same_leave_one_out_embeddings_as_cci(openclip_dir):
    from covar_harness.attribution.engine import attribute
    from covar_harness.attribution.settings import DEFAULTS
    from covar_harness.models.specs import load_model

    adapter = load_model(f"openclip:local-dir:{openclip_dir}")
    pixels = torch.stack([adapter.preprocess(make_image((200, 30 * j, 10), seed=j)) for j in range(2)])
    with torch.no_grad():
        emb = F.normalize(adapter.encode_images(pixels).float(), dim=-1)
        text = F.normalize(torch.randn(2, emb.shape[1]), dim=-1)
        settings = type(DEFAULTS)(k=3)
        cci = attribute(adapter, pixels, emb, text, torch.tensor([0, 1]), [1, 2], settings, "cci")
        shap = attribute(adapter, pixels, emb, text, torch.tensor([0, 1]), [1, 2], settings, "cci-shapley")
        rand = attribute(adapter, pixels, emb, text, torch.tensor([0, 1]), [1, 2], settings, "random")
    assert cci.without is not None and cci.without.shape == (2, 3, emb.shape[1])
    valid = cci.valid[..., None]
    assert torch.allclose(cci.without * valid, shap.without * valid, atol=1e-5)
    assert rand.without is None  # removes no cluster on its own: nothing to name


# ---- through the CLI ---------------------------------------------------------------------------------------------
def _task(tmp_path: Path) -> Path:
    import yaml

    root = make_covar(tmp_path / "covar", subsets=("bg_varied",), per_class=3)
    body = {
        "task": "toy/covar",
        "dataset": {"format": "covar", "path": str(root), "subset": "bg_varied"},
        "templates": ["a photo of a {}."],
        "version": 1,
    }
    path = tmp_path / "covar.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_run_names_regions_logs_them_and_resumes(tmp_path, openclip_dir):
    task, out, spec = _task(tmp_path), tmp_path / "res", f"openclip:local-dir:{openclip_dir}"
    bank = _image_bank(tmp_path / "bank", {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)})
    args = [
        "run",
        "--models",
        spec,
        "--tasks",
        str(task),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--cci-k",
        "3",
        "--log-samples",
        "--concepts",
        f"images:{bank}",
        "--concepts-top",
        "2",
    ]
    r = run_cli_inprocess(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    path = results.result_path(out, spec, "toy/covar")
    record = json.loads(path.read_text())
    concepts = record["config"]["concepts"]
    assert concepts["status"] == "ran" and concepts["bank"]["kind"] == "images" and concepts["n_named"] == 9
    assert concepts["temperature_from"] == "the model's logit scale"
    assert record["config"]["run_settings"]["concepts"]["bank"] == f"images:{bank}"
    rows = [json.loads(x) for x in results.samples_path(path).read_text().splitlines()]
    for row in rows:
        named = row["concepts"]["clusters"]
        assert len(named) == 3 and all(
            len(p) in (0, 2) and all(c in ("red", "green", "blue") for c, _ in p) for p in named
        )
        driving = row["concepts"]["driving_bg_cluster"]
        assert driving is None or named[driving][0][0] == row["concepts"]["driving_bg_concept"]
    again = run_cli_inprocess(*args)
    assert again.returncode == 0 and "skipped" in again.stdout + again.stderr
    from covar_harness.run.rescore import RescoreSettings, rescore_result

    rescored = rescore_result(record, rows, RescoreSettings(rules=("paper",))).result
    assert "concepts" not in rescored["config"] and "concepts" not in rescored["config"]["run_settings"]
    assert any("concept summary" in item for item in rescored["config"]["rescored"]["not_rescored"])


def test_run_concepts_refuses_bad_banks_before_loading(tmp_path):
    r = run_cli_inprocess(
        "run",
        "--models",
        "demo/shapes-clean",
        "--tasks",
        "covar-shapes/bg_varied",
        "--output-dir",
        str(tmp_path),
        "--concepts",
        "visual-concept",
        "--dry-run",
    )
    assert r.returncode == 2 and "did you mean 'visual-concepts'" in r.stderr
    r = run_cli_inprocess(
        "run",
        "--models",
        "demo/shapes-clean",
        "--tasks",
        "covar-shapes/bg_varied",
        "--output-dir",
        str(tmp_path),
        "--concepts",
        "visual-concepts",
        "--attribution",
        "none",
    )
    assert r.returncode == 2 and "needs --attribution" in r.stderr
    r = run_cli_inprocess(
        "run",
        "--models",
        "demo/shapes-clean",
        "--tasks",
        "covar-shapes/bg_varied",
        "--output-dir",
        str(tmp_path),
        "--concepts",
        "visual-concepts",
        "--concepts-top",
        "0",
    )
    assert r.returncode == 2 and "--concepts-top" in r.stderr


def test_random_attribution_names_nothing_and_says_why(tmp_path, openclip_dir):
    task, out, spec = _task(tmp_path), tmp_path / "res", f"openclip:local-dir:{openclip_dir}"
    r = run_cli_inprocess(
        "run",
        "--models",
        spec,
        "--tasks",
        str(task),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--cci-k",
        "3",
        "--attribution",
        "random",
        "--concepts",
        "visual-concepts",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(results.result_path(out, spec, "toy/covar").read_text())
    assert record["config"]["concepts"]["status"] == "off"
    assert "removes no clusters" in record["config"]["concepts"]["reason"]


def test_ls_concepts_lists_the_shipped_banks():
    r = run_cli_inprocess("ls", "concepts")
    assert r.returncode == 0 and "visual-concepts" in r.stdout and "covar-shapes-backgrounds" in r.stdout


def test_explain_prints_each_clusters_concept(tmp_path, openclip_dir):
    image = tmp_path / "x.png"
    make_image((200, 40, 40)).save(image)
    words = tmp_path / "words.txt"
    words.write_text("snow\ngrass\nwater\n")
    r = run_cli_inprocess(
        "explain",
        "--model",
        f"openclip:local-dir:{openclip_dir}",
        "--image",
        str(image),
        "--classes",
        "cat,dog",
        "--k",
        "3",
        "--concepts",
        f"text:{words}",
        "--out",
        str(tmp_path / "o.png"),
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "concept (score)" in r.stdout and any(w in r.stdout for w in ("snow (", "grass (", "water ("))


# ---- leaderboard and report --------------------------------------------------------------------------------------
def _result_with_concepts(concepts: object) -> dict:
    return {
        "model": {"spec": "m"},
        "task": {"name": "t", "version": 1, "n_samples": 3},
        "metrics": {},
        "config": {"concepts": concepts},
    }


GOOD = {
    "status": "ran",
    "bank": {"name": "b", "kind": "text", "n_concepts": 3, "source": "s"},
    "n_bg_errors": 4,
    "n_bg_errors_named": 3,
    "background_errors": [
        {"concept": "<snow>", "count": 2, "share": 2 / 3, "interval": [0.3, 1.0], "null_share": 0.2, "p_value": 0.01}
    ],
    "by_predicted_class": [{"class": "polar bear", "n": 2, "concept": "<snow>", "count": 2, "share": 1.0}],
    "class_association": {"agreement": 1.0, "null_mean": 0.4, "null_95": 0.6, "p_value": 0.02, "draws": 1000},
}


def test_leaderboard_table_what_drives_background_errors():
    from covar_harness.leaderboard.tables import build_tables

    tables = [t for t in build_tables([_result_with_concepts(GOOD)]) if "what drives" in t.title]
    assert len(tables) == 1
    row = tables[0].rows[0]
    assert row[:6] == ["m", "t", "b", "3 of 4", "<snow>", 66.7] and row[-2:] == [100.0, 40.0]
    for bad in ({"status": "ran", "background_errors": [{"concept": 3}]}, "x", {"status": "off"}):
        assert not [t for t in build_tables([_result_with_concepts(bad)]) if "what drives" in t.title]


def test_report_section_escapes_and_shows_examples():
    from covar_harness.leaderboard.report.concepts import concepts_section

    row = {
        "index": 5,
        "file": "a.png",
        "label": 0,
        "pred": 1,
        "cci": {"importance": [0.1, 0.6], "assignments": [0, 0, 1, 1]},
        "concepts": {
            "clusters": [[["grass", 0.1]], [["<snow>", 0.4]]],
            "driving_bg_cluster": 1,
            "driving_bg_concept": "<snow>",
        },
    }
    html = concepts_section(_result_with_concepts(GOOD), [row], ["cat", "polar bear"], {})
    assert "What drives background errors" in html and "&lt;snow&gt;" in html and "<snow>" not in html
    assert "because of" in html and "Examples" in html and "polar bear" in html
    assert concepts_section(_result_with_concepts({"status": "off"}), [row], None, {}) == ""


def test_text_bank_runs_on_a_model_by_spec(tmp_path, openclip_dir):
    """The shipped text bank through `run`: encoded by the model's own text encoder with the task's templates
    (what runs on the paper's models by name; random tiny weights here)."""
    task, out, spec = _task(tmp_path), tmp_path / "res", f"openclip:local-dir:{openclip_dir}"
    r = run_cli_inprocess(
        "run",
        "--models",
        spec,
        "--tasks",
        str(task),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--cci-k",
        "3",
        "--limit",
        "3",
        "--concepts",
        "visual-concepts",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    concepts = json.loads(results.result_path(out, spec, "toy/covar").read_text())["config"]["concepts"]
    assert concepts["status"] == "ran" and concepts["bank"] == {
        "name": "visual-concepts",
        "kind": "text",
        "n_concepts": 173,
        "source": concepts["bank"]["source"],
    }
