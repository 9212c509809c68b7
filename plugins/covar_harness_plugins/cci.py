"""Built-in plugin: the attributors of ``covar_harness.attribution`` (docs/design.md section 7): ``cci``,
``cci-shapley``, the ``random`` and ``random-patch`` baselines, ``occlusion``, ``rise`` and the gradient /
attention baselines ``gradcam``, ``rollout``, ``chefer``, ``chefer-last`` and ``grad-eclip`` (these need the
adapter's ``attention_trace``), one Attributor class each.

Each class registers itself with one line (``Method.register_with(register)``): its name, description, the K it
allows (``k_range``, checked when the step is built, so a bad ``--cci-k`` is exit 2 before any model loads) and its
factory, which takes the CCI settings as keyword arguments (``CCISettings`` fields, ``save_maps``,
``only_with_masks``) and returns the attribution step. Importing the classes imports no torch, so plugin
discovery, ``--help`` and ``ls`` stay light.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from covar_harness.attribution.cci import CCI  # no torch at import
from covar_harness.attribution.chefer import Chefer, CheferLast
from covar_harness.attribution.grad_eclip import GradECLIP
from covar_harness.attribution.gradcam import GradCAM
from covar_harness.attribution.occlusion import Occlusion
from covar_harness.attribution.random_baseline import RandomBaseline, RandomPatch
from covar_harness.attribution.rise import RISE
from covar_harness.attribution.rollout import Rollout
from covar_harness.attribution.shapley import CCIShapley
from covar_harness.catalog.hookspecs import hookimpl
from covar_harness.concepts.banks import TextBank, read_vocabulary


@hookimpl
def register_attributors(register):
    CCI.register_with(register)
    CCIShapley.register_with(register)
    RandomBaseline.register_with(register)
    RandomPatch.register_with(register)
    Occlusion.register_with(register)
    RISE.register_with(register)
    GradCAM.register_with(register)
    Rollout.register_with(register)
    Chefer.register_with(register)
    CheferLast.register_with(register)
    GradECLIP.register_with(register)


VOCABULARY = "visual-concepts"


def visual_concepts():
    """The shipped general visual-concept vocabulary (resources/concepts/visual-concepts.txt; its sources are
    named in the file): a text bank, encoded by each model's text encoder with the task's templates."""
    path = resources.files("covar_harness") / "resources" / "concepts" / f"{VOCABULARY}.txt"
    concepts, source = read_vocabulary(Path(str(path)))
    return TextBank(VOCABULARY, concepts=concepts, source=source)


@hookimpl
def register_concept_banks(register):
    register(
        VOCABULARY,
        visual_concepts,
        description="173 visual concepts (text): DTD textures, MINC materials, scenes, weather, watermark/text, "
        "COCO objects",
    )
