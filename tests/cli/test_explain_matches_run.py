"""``explain`` says what a run says: the image goes through the run's one per-sample pass with the run's steps, so
its records, diagnosis verdict under every ``--driver-rule`` and region test equal what a run of a one-sample
task logs for that image (same model, settings and seed; the sample id given as ``--sample-id``)."""

import json

import pytest

from helpers import make_covar, run_cli_inprocess, write_task_yaml

RULES = "area,paper,counterfactual"


@pytest.fixture
def one_sample(tmp_path):
    """A COVAR subset holding one image with its mask, and a task over it (templates as explain's default)."""
    root = make_covar(tmp_path / "covar", subsets=("original",), per_class=1)
    metadata = root / "original" / "metadata.jsonl"
    metadata.write_text(metadata.read_text().splitlines()[0] + "\n")
    dataset = {"format": "covar", "path": str(root), "subset": "original"}
    return root, write_task_yaml(tmp_path / "tasks" / "one.yaml", "toy/one", root, dataset=dataset, templates="simple")


def _run(spec, task, out, *flags):
    r = run_cli_inprocess(
        "run", "--models", spec, "--tasks", str(task), "--output-dir", str(out), "--log-samples", "--workers", "0",
        "--device", "cpu", "--attribution", "cci", "--driver-rule", RULES, *flags,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (path,) = out.rglob("*.samples.jsonl")
    (row,) = [json.loads(line) for line in path.read_text().splitlines()]
    return row


def _explain_args(spec, root, row, tmp_path, *flags):
    image = root / row["file"]
    mask = image.with_name(image.stem + ".mask.png")
    assert image.is_file() and mask.is_file()
    return [
        "explain", "--model", spec, "--image", str(image), "--mask", str(mask), "--classes", "cat,dog,fish",
        "--sample-id", row["file"], "--driver-rule", RULES, "--device", "cpu", "--out", str(tmp_path / "o.png"),
        *flags,
    ]  # fmt: skip


def _records(argv):
    from covar_harness.attribution.records import AttributionRecord
    from covar_harness.cli.explain import explain_from_args
    from covar_harness.cli.main import build_parser
    from covar_harness.diagnosis.rules import DiagnosisRecord

    out, _, _ = explain_from_args(build_parser().parse_args(argv))
    fields = {**out.record(AttributionRecord).log_fields(), **out.record(DiagnosisRecord).log_fields()}
    return out, json.loads(json.dumps(fields))  # as the sample log reads back


@pytest.mark.parametrize("target", ["pred", "label"])
def test_explain_equals_the_runs_logged_diagnosis_and_region_test(target, openclip_dir, one_sample, tmp_path):
    root, task = one_sample
    spec = f"openclip:local-dir:{openclip_dir}"
    row = _run(spec, task, tmp_path / "run", "--cci-target", target)
    label = ["cat", "dog", "fish"][row["label"]]
    flags = ["--label", label] if target == "pred" else ["--target", label]
    argv = _explain_args(spec, root, row, tmp_path, *flags)

    out, fields = _records(argv)
    assert "counterfactual" in fields and set(fields["drivers"]) == set(RULES.split(","))
    assert fields == {key: row[key] for key in fields}  # cci, region test, every rule's driver, score and null
    assert out.pred == row["pred"] and out.label == row["label"]

    r = run_cli_inprocess(*argv)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    rules = {ln.split(":")[0].strip(): ln for ln in text.splitlines() if ln.startswith("  ") and "fg score" in ln}
    for name in RULES.split(","):
        score, driver = row["scores"][name], row["drivers"][name]
        if score is None:
            assert f"  {name}: undetermined" in text
        else:
            assert f"fg score {score:.3f}" in rules[name] and f"driver: {driver}" in rules[name]
    cf = row["counterfactual"]
    assert f"outcome {cf['outcome'] or 'undefined'}" in text
    if cf["s_fg_only"] is not None:
        assert f"only the foreground: s = {cf['s_fg_only']:.4f}" in text
    verdict = "verdict: correct" if row["correct"] else f"error type (area): {row['error_type']}"
    assert verdict in text
