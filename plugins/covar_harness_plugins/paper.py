"""Built-in plugin: the 18 model variants of the paper's tables (CCI / COVAR, CVPR 2026), tagged ``paper``.

Each is a name for an open_clip spec, read from the packaged table ``resources/reference/paper_models.csv``
(the one source of truth; nothing is duplicated here). Names are stable and derived mechanically:

    paper/<table model name>-<patch>-<resolution>-<training data>
    e.g. paper/vit-b-32-256-datacomp, paper/vit-l-14-336-openai, paper/vit-b-siglip2-16-384-webli

lower-cased, with ``-qgelu`` dropped from the model name (QuickGELU is an implementation detail that the open_clip
spec carries: the ``-quickgelu`` architectures go with the openai and DFN weights) and the data set's size suffix
dropped (``DataComp-1B`` -> ``datacomp``, ``LAION-2B`` -> ``laion2b``, ``DFN-5B`` -> ``dfn5b``). Tags: ``paper``
and the family (``clip``, ``siglip``, ``siglip2``). Nothing is downloaded until a model is run.
"""

from __future__ import annotations

from covar_harness.catalog.hookspecs import hookimpl
from covar_harness.data.resources import read_csv

TABLE = "paper_models.csv"
DATA_SLUGS = {
    "DataComp-1B": "datacomp",
    "LAION-2B": "laion2b",
    "DFN-2B": "dfn2b",
    "DFN-5B": "dfn5b",
    "WebLI": "webli",
    "OpenAI": "openai",
}


def paper_rows() -> list[dict[str, str]]:
    """The rows of ``resources/reference/paper_models.csv``, in the paper's order."""
    return read_csv("reference", TABLE)


def model_name(row: dict[str, str]) -> str:
    arch = row["name"].lower().replace("-qgelu", "")
    data = DATA_SLUGS.get(row["dataset"], row["dataset"].lower())
    return f"paper/{arch}-{row['patch']}-{row['res']}-{data}"


def family(row: dict[str, str]) -> str:
    arch = row["openclip_model"].lower()
    return "siglip2" if "siglip2" in arch else "siglip" if "siglip" in arch else "clip"


def describe(row: dict[str, str]) -> str:
    text = f"paper row {row['row']}: {row['name']} /{row['patch']} at {row['res']} px, {row['dataset']} weights"
    return text + (f"; {row['note']}" if row.get("note") else "")


def spec(row: dict[str, str]) -> str:
    return f"openclip:{row['openclip_model']}/{row['openclip_pretrained']}"


@hookimpl
def register_models(register):
    for row in paper_rows():
        register(model_name(row), spec(row), tags=("paper", family(row)), description=describe(row))
