"""``covar-harness faithfulness`` end to end on the planted-truth toy (test_cci): one JSON per model x task x
attributor with AUCs, pointing energy and intervals, the curves PNG, the table with the random rows, and each
method's paired per-image differences from both random baselines; bad flags are exit 2 before any model loads."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli_inprocess


def test_command_end_to_end(tmp_path, toy_catalog, masked_task):  # noqa: F811
    out = tmp_path / "faith"
    args = ["--models", "toy-topleft", "--tasks", str(masked_task), "--output-dir", str(out)]
    proc = run_cli_inprocess(
        "faithfulness", *args, "--attributors", "occlusion,cci", "--steps", "8", "--replacement", "black",
        "--target", "label", "--bootstrap", "50", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    folder = out / "toy-topleft" / "toy__masked"
    files = {p.name for p in folder.iterdir()}
    # both random baselines added: every method is compared with them image by image
    assert files == {"cci.json", "occlusion.json", "random.json", "random-patch.json", "curves.png"}
    assert {p.name for p in out.glob("*.png")} == {"curves-toy-topleft-toy__masked.png"}  # all methods, one figure
    assert (out / "curves-toy-topleft-toy__masked.png").stat().st_size > 1000
    names = ("cci", "occlusion", "random", "random-patch")
    res = {name: json.loads((folder / f"{name}.json").read_text()) for name in names}
    for r in res.values():
        assert r["n_samples"] == 4 and r["error"] is None
        assert "samples_file" not in r and all("deletion_curve" not in x for x in r["samples"])  # no --log-samples
        for key in ("deletion_auc", "insertion_auc", "deletion_tokens_auc", "insertion_tokens_auc"):
            assert isinstance(r[key], float)
            lo, hi = r["metrics"][key]["interval"]
            assert lo <= r[key] <= hi
        assert len(r["curves"]["deletion"]["mean"]) == 9 and r["settings"]["replacement"] == "black"
        assert r["settings"]["temperature"] == 100.0 and "no logit scale" in r["settings"]["temperature_from"]
    occ, rnd = res["occlusion"], res["random"]
    assert occ["deletion_auc"] < rnd["deletion_auc"] and occ["insertion_auc"] > rnd["insertion_auc"]
    assert occ["deletion_tokens_auc"] < rnd["deletion_tokens_auc"]
    assert occ["pointing_energy"] == 1.0  # the toy mask is the top-left quarter, the only patches that matter
    assert occ["relevance_rank_accuracy"] == 1.0
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # paired differences: the mean of the per-image differences, by hand from the files' own samples
    assert set(occ["paired"]) == {"random", "random-patch"} and set(rnd["paired"]) == {"random-patch"}
    assert res["random-patch"]["paired"] == {}
    for base in ("random", "random-patch"):
        theirs = {s["index"]: s for s in res[base]["samples"]}
        for metric in ("deletion_auc", "insertion_tokens_auc"):
            d = [s[metric] - theirs[s["index"]][metric] for s in occ["samples"]]
            entry = occ["paired"][base][metric]
            assert entry["n"] == 4 and entry["mean"] == pytest.approx(sum(d) / 4)
            assert entry["interval"][0] <= entry["mean"] <= entry["interval"][1] and 0 <= entry["p"] <= 1
            assert min(d) - 1e-9 <= entry["interval"][0] and entry["interval"][1] <= max(d) + 1e-9
    lines = proc.stdout.splitlines()
    assert any("paired differences" in line for line in lines)
    occ_row = next(line for line in lines if "│ occlusion" in line and "│ random-patch" in line)
    assert not any(line.startswith("│ random-patch") and "│ random " in line for line in lines)  # no mirror
    assert f"{occ['paired']['random-patch']['deletion_auc']['mean']:+.3f}" in occ_row


def test_bad_flags_exit_2(tmp_path, toy_catalog, masked_task):  # noqa: F811
    base = ["faithfulness", "--models", "toy-topleft", "--tasks", str(masked_task), "--output-dir", str(tmp_path)]
    proc = run_cli_inprocess(*base, "--attributors", "cci,no-such-method")  # (gradcam is registered now)
    assert proc.returncode == 2 and "no-such-method" in proc.stderr
    proc = run_cli_inprocess(*base, "--steps", "0")
    assert proc.returncode == 2 and "--steps" in proc.stderr
    proc = run_cli_inprocess(*base, "--device", "cuda:7x")
    assert proc.returncode == 2


def test_bad_rise_flags_exit_2_before_any_model_loads(tmp_path, toy_catalog, masked_task):  # noqa: F811
    out = tmp_path / "out"
    base = ["faithfulness", "--models", "toy-topleft", "--tasks", str(masked_task), "--output-dir", str(out)]
    for flag, value in (("--rise-masks", "0"), ("--rise-cell", "0"), ("--rise-keep", "1"), ("--rise-seed", "-1")):
        proc = run_cli_inprocess(*base, flag, value)
        assert proc.returncode == 2 and flag in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    run = ["run", "--models", "toy-topleft", "--tasks", str(masked_task), "--output-dir", str(out)]
    proc = run_cli_inprocess(*run, "--attribution", "rise", "--rise-keep", "0")
    assert proc.returncode == 2 and "--rise-keep" in proc.stderr
    assert not out.exists()


def test_run_records_the_rise_settings(tmp_path, toy_catalog, masked_task):  # noqa: F811
    """``run --attribution rise --rise-*``: the masks used are the flags' (the removal call has n_masks patterns),
    recorded in config.attribution; a rerun with other masks is refused as other settings, not skipped as done."""
    out = tmp_path / "runs"
    run = ["run", "--models", "toy-topleft", "--tasks", str(masked_task), "--output-dir", str(out), "--device", "cpu"]
    proc = run_cli_inprocess(*run, "--attribution", "rise", "--rise-masks", "8", "--rise-cell", "1")
    assert proc.returncode == 0, proc.stderr
    (path,) = out.rglob("*.json")
    rec = json.loads(path.read_text())
    assert rec["config"]["attribution"]["method"] == "rise"
    assert rec["config"]["attribution"]["rise"] == {"n_masks": 8, "cell": 1, "p_keep": 0.5, "seed": 0}
    again = run_cli_inprocess(*run, "--attribution", "rise", "--rise-masks", "8", "--rise-cell", "1")
    assert again.returncode == 0 and "skipped" in again.stdout
    other = run_cli_inprocess(*run, "--attribution", "rise", "--rise-masks", "9", "--rise-cell", "1")
    assert other.returncode == 2 and "rise.n_masks: 8 there, 9 now" in other.stderr


def test_published_protocols_end_to_end(tmp_path, toy_catalog, masked_task):  # noqa: F811
    """``--protocol grad-eclip`` and ``--protocol rise`` beside the default in one folder: each protocol's files in
    its own subfolder with what it is recorded, its own leaderboard tables; a flag the protocol fixes is exit 2."""
    out = tmp_path / "faith"
    base = ["faithfulness", "--models", "toy-topleft", "--tasks", str(masked_task), "--output-dir", str(out),
            "--attributors", "occlusion", "--bootstrap", "20", "--device", "cpu"]  # fmt: skip
    for protocol in ("grad-eclip", "rise"):
        proc = run_cli_inprocess(*base, "--protocol", protocol)
        assert proc.returncode == 0, proc.stderr
        assert f"protocol {protocol}:" in proc.stdout
        folder = out / protocol / "toy-topleft" / "toy__masked"
        assert {p.name for p in folder.glob("*.json")} == {"occlusion.json", "random.json", "random-patch.json"}
        occ = json.loads((folder / "occlusion.json").read_text())
        assert occ["settings"]["protocol"] == protocol and occ["metrics"]["deletion_tokens_auc"]["n"] == 0
        assert occ["settings"]["target"] == ("label" if protocol == "grad-eclip" else "pred")
        assert len(occ["curves"]["deletion"]["x"]) == (11 if protocol == "grad-eclip" else 65)
        assert set(occ["paired"]) == {"random", "random-patch"}
    assert run_cli_inprocess(*base, "--steps", "4").returncode == 0  # the default protocol at the top level
    md = run_cli_inprocess("leaderboard", str(out), "--format", "markdown").stdout
    titles = [line[4:] for line in md.splitlines() if line.startswith("### faithfulness")]
    where = ("", " (protocol grad-eclip)", " (protocol rise)")
    expected = [f"faithfulness{kind}: toy/masked{p}" for p in where for kind in ("", ", paired differences")]
    assert sorted(titles) == sorted(expected), titles
    assert run_cli_inprocess("validate", str(out)).returncode == 0
    proc = run_cli_inprocess(*base, "--protocol", "grad-eclip", "--steps", "4")
    assert proc.returncode == 2 and "--protocol grad-eclip sets --steps itself" in proc.stderr
    proc = run_cli_inprocess(*base, "--protocol", "rise", "--target", "label")
    assert proc.returncode == 2 and "--target" in proc.stderr
    proc = run_cli_inprocess(*base, "--protocol", "causal")
    assert proc.returncode == 2 and "--protocol must be one of patches, grad-eclip, rise" in proc.stderr
