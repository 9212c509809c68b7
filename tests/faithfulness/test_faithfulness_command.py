"""``covar-harness faithfulness`` end to end on the planted-truth toy (test_cci): one JSON per model x task x
attributor with AUCs, pointing energy and intervals, the curves PNG, and the table with the random row and the
ratio to it; bad flags are exit 2 before any model loads."""

from __future__ import annotations

import json

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
    assert files == {"cci.json", "occlusion.json", "random.json", "curves.png"}  # random added: the baseline
    assert {p.name for p in out.glob("*.png")} == {"curves-toy-topleft-toy__masked.png"}  # all methods, one figure
    assert (out / "curves-toy-topleft-toy__masked.png").stat().st_size > 1000
    res = {name: json.loads((folder / f"{name}.json").read_text()) for name in ("cci", "occlusion", "random")}
    for r in res.values():
        assert r["n_samples"] == 4 and r["error"] is None
        assert "samples_file" not in r and all("deletion_curve" not in x for x in r["samples"])  # no --log-samples
        for key in ("deletion_auc", "insertion_auc", "deletion_tokens_auc", "insertion_tokens_auc"):
            assert isinstance(r[key], float)
            lo, hi = r["metrics"][key]["interval"]
            assert lo <= r[key] <= hi
        assert len(r["curves"]["deletion"]["mean"]) == 9 and r["settings"]["replacement"] == "black"
    occ, rnd = res["occlusion"], res["random"]
    assert occ["deletion_auc"] < rnd["deletion_auc"] and occ["insertion_auc"] > rnd["insertion_auc"]
    assert occ["deletion_tokens_auc"] < rnd["deletion_tokens_auc"]
    assert occ["pointing_energy"] == 1.0  # the toy mask is the top-left quarter, the only patches that matter
    assert occ["relevance_rank_accuracy"] == 1.0
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = proc.stdout.splitlines()
    random_row = next(line for line in lines if "│ random" in line)
    assert random_row.count("1.00x") == 4  # the baseline's own ratios: pixels and tokens, deletion and insertion
    occ_row = next(line for line in lines if "│ occlusion" in line)
    ratio = occ["deletion_auc"] / rnd["deletion_auc"]
    assert f"{ratio:.2f}x" in occ_row


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
