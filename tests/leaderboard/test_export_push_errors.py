"""Issue 25 (new-user friction): ``export --push`` without a network ended in "internal error"; now any Hub
failure (offline, refused connection, an HTTP error) is one line that says the files are written."""

from __future__ import annotations

import types

import pytest

from covar_harness.catalog.registry import UsageError
from covar_harness.leaderboard import exports


def _folder(tmp_path):
    (tmp_path / "m" / ".eval_results").mkdir(parents=True)
    (tmp_path / "m" / ".eval_results" / "t.yaml").write_text("x: 1\n")
    return tmp_path / "m"


@pytest.mark.parametrize(
    "error", [ConnectionError("Max retries exceeded with url: /api\nmore"), OSError(101, "Network is unreachable")]
)
def test_a_hub_failure_is_one_line(tmp_path, error):
    class Api:
        def upload_folder(self, **kwargs):
            raise error

    hub = types.SimpleNamespace(HfApi=Api, metadata_update=None)
    with pytest.raises(UsageError) as err:
        exports.push_hf(hub, "me/model", _folder(tmp_path), [])
    text = str(err.value)
    assert "\n" not in text and "could not be reached" in text and "push again when online" in text
    assert type(error).__name__ in text


@pytest.mark.slow  # the client retries a refused connection for about 25 s
def test_the_real_client_against_an_unreachable_hub_is_one_line(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    with pytest.raises(UsageError) as err:
        exports.push_hf(hub, "me/model", _folder(tmp_path), [])
    assert "\n" not in str(err.value) and "could not be reached" in str(err.value)
