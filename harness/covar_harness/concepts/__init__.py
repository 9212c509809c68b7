"""Concept naming (docs/design.md section 11, issue 27): which concept each CCI region is, from a concept bank
embedded by the model under study, and which concepts drive each model's background errors.

- ``settings``: :class:`ConceptSettings` (``--concepts``, ``--concepts-top``).
- ``banks``: :class:`ConceptBank` (``text:FILE``, ``images:DIR``, registered banks), :func:`resolve_bank`.
- ``naming``: the contribution direction of each cluster, :func:`name_batch`, :class:`ConceptStep` (the pipeline
  step after the diagnosis) and its :class:`ConceptRecord`.
- ``summary``: the pair's summary: concepts of the driving background clusters with a null, per predicted class,
  whether the concepts follow the predicted class; :func:`expected_agreement` for a known class -> concept map.

This package's ``__init__`` imports nothing, so the CLI's parser reads ``settings.ConceptSettings`` without
loading the rest (``--help`` stays light); import from the modules.
"""
