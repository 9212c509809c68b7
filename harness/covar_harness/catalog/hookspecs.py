"""Plugin hook specifications: the whole extension surface of covar-harness.

Every hook receives a ``register`` callable and nothing else, so a plugin never touches core state: the
core decides what to keep, validates it, and reports conflicts. Plugins import heavy libraries (torch,
open_clip, transformers) inside the objects they register, never at module import, so that ``--help``,
``ls`` and ``plugins`` stay fast.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("covar_harness")
hookimpl = pluggy.HookimplMarker("covar_harness")


@hookspec
def register_models(register):
    """Register named models.

    ``register(name, factory, *, aliases=(), tags=(), description="")``. ``factory`` is a zero-argument
    callable returning a ModelAdapter, or a model spec string such as ``"openclip:ViT-B-32-quickgelu/openai"``
    (the name is then an alias of that spec). A factory may also accept keyword arguments ``device`` and
    ``precision``; the harness passes them when it does. Tags double as groups: ``--models paper`` selects
    every model tagged ``paper``.
    """


@hookspec
def register_tasks(register):
    """Register task definitions.

    ``register(source)``: a path to a task YAML file, a directory searched recursively for ``*.yaml``, or a
    dict following the task YAML schema. Files are parsed as data (``yaml.safe_load``), never executed.
    """


@hookspec
def register_attributors(register):
    """Register attribution methods (CCI and baselines).

    ``register(name, factory, *, description="")``; ``factory(**settings)`` returns an attributor object.
    """


@hookspec
def register_segmenters(register):
    """Register foreground-mask providers (dataset masks, GroundedSAM, ...).

    ``register(name, factory, *, description="")``; ``factory(**settings)`` returns a segmenter object.
    """


@hookspec
def register_concept_banks(register):
    """Register concept banks that ``--concepts NAME`` names CCI's regions against (docs/design.md section 11).

    ``register(name, factory, *, description="")``; ``factory(**settings)`` returns a
    ``covar_harness.concepts.ConceptBank`` (it receives ``data_dir`` when it accepts it). Building the bank must be
    cheap (no image read, nothing generated): the CLI resolves it before any model loads.
    """


@hookspec
def register_model_schemes(register):
    """Register a model spec scheme, the part before the first colon of ``openclip:ARCH/TAG``.

    ``register(scheme, loader, *, description="")``; ``loader(rest, *, device, precision, cache_dir)``
    returns a ModelAdapter, where ``rest`` is the spec after ``scheme:``.
    """


@hookspec
def register_dataset_formats(register):
    """Register a dataset format usable as ``dataset.format`` in task YAML.

    ``register(name, loader, *, preflight=None, description="")``; ``loader(dataset_cfg, data_dir)`` returns a
    ``covar_harness.data.samples.SampleSet``. ``dataset_cfg`` is the task's ``dataset`` mapping with ``path``
    already resolved. ``preflight(dataset_cfg, data_dir)``, optional, checks cheaply (no image decoded, no
    network) that the data is there before any model loads: it returns None, a note (the task is then skipped
    with it) or a SampleSet it could open cheaply, and raises ``covar_harness.data.samples.DatasetNotFound`` when the
    data is missing (docs/design.md section 5).
    """
