"""ImageNet-1k class data shipped in ``covar_harness/resources``, and name -> index matching over it.

Datasets name ImageNet classes in several ways (WordNet synonym strings, one synonym, open_clip's curated
names, the CounterAnimals release's folder names with their own capitalisation), so matching a class name to
its ImageNet index tries them from the most to the least specific and refuses ambiguous names ("crane" is both
a bird and a machine) instead of guessing. A core module (class groups over the ImageNet label space use it);
the task code imports it, never the other way round.
"""

from __future__ import annotations

from functools import lru_cache

from covar_harness.data.resources import named


def wordnet_names() -> list[str]:
    """The 1000 WordNet synonym strings, e.g. ``"tench, Tinca tinca"`` (label order)."""
    return list(named("classnames", "imagenet1k_wordnet"))


def curated_names() -> list[str]:
    """open_clip's curated ImageNet-1k names, e.g. ``"tench"``."""
    return list(named("classnames", "imagenet1k"))


def counteranimals_classes() -> list[dict]:
    """The 45 CounterAnimals classes: id, imagenet_index, folder, backgrounds, the paper's image counts."""
    return list(named("reference", "counteranimals_classes")["classes"])


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


@lru_cache(maxsize=1)
def _tiers() -> tuple[dict[str, set[int]], ...]:
    """Lookup tables, most specific first: full synonym string, curated name, first synonym, any synonym."""
    full: dict[str, set[int]] = {}
    curated: dict[str, set[int]] = {}
    first: dict[str, set[int]] = {}
    anyone: dict[str, set[int]] = {}
    for i, (wn, cur) in enumerate(zip(wordnet_names(), curated_names())):
        full.setdefault(_norm(wn), set()).add(i)
        curated.setdefault(_norm(cur), set()).add(i)
        synonyms = [_norm(s) for s in wn.split(",")]
        first.setdefault(synonyms[0], set()).add(i)
        for s in synonyms:
            anyone.setdefault(s, set()).add(i)
    return full, curated, first, anyone


def imagenet_index(name: str) -> int | None:
    """The ImageNet-1k index a class name denotes, or None when unknown or ambiguous.

    Case-insensitive; a full synonym string must match exactly or its leading synonyms must (the release
    writes ``bighorn, bighorn sheep, cimarron`` for WordNet's six synonyms).
    """
    key = _norm(name)
    for table in _tiers():
        hits = table.get(key)
        if hits:
            return next(iter(hits)) if len(hits) == 1 else None
    if "," in key:
        prefix = [i for i, wn in enumerate(wordnet_names()) if _norm(wn).startswith(key + ",")]
        if len(prefix) == 1:
            return prefix[0]
    return None
