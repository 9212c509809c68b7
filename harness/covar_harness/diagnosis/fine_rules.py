"""Fine-grained rules: when is a misclassification a fine-grained confusion (docs/design.md section 8)?

Fine-Er counts the errors whose prediction is a fine-grained confusion of the label, and the paper's own rule
for that is unknown. So the rule is a choice, made with ``--fine-rule`` and recorded in the result, and the
result also carries Fine-Er under a fixed set of other rules (:data:`SENSITIVITY`), so a reader sees how much the
number owes to the choice. Each rule is one small class registered in :data:`FINE_RULES` by its kind:

- ``groups`` (default, inferred): the task's ``class_groups`` (``class_groups.py``);
- ``wordnet-cap:N``: the shipped ``imagenet1k`` cut with another cap: a class's group is the highest synset on
  its primary WordNet hypernym chain covering at most N of the 1000 ImageNet classes (N=40 is the shipped one);
- ``wordnet-lca:D``: label and prediction are fine-grained when their lowest common ancestor on the primary
  chains lies at depth >= D (the root, ``entity``, is depth 0);
- ``text-neighbours:K``: the prediction is one of the K classes whose text embeddings (the pair's own
  classifier) are closest to the label's.

The WordNet rules read ``resources/reference/imagenet1k_hypernyms.json`` (each chain's parent links, built by
``scripts/make_class_groups.py``) and apply to classes matched to ImageNet classes by name, as ``class_groups``
does; a class that matches none is never fine-grained, and the rule says how many those were.
A rule resolved for one task is a :class:`FineRelation`.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from covar_harness.catalog.registry import UsageError
from covar_harness.data.class_groups import UNMATCHED, class_groups, class_groups_rule, imagenet_indices, share_group
from covar_harness.data.resources import named

if TYPE_CHECKING:
    from covar_harness.catalog.taskconfig import TaskConfig

DEFAULT = "groups"
# Fine-Er is also reported under each of these (config.diagnosis.fine_sensitivity); fixed, so results compare
SENSITIVITY = (
    "groups",
    "wordnet-cap:10",
    "wordnet-cap:20",
    "wordnet-cap:40",
    "wordnet-lca:8",
    "wordnet-lca:11",
    "text-neighbours:1",
    "text-neighbours:3",
    "text-neighbours:5",
)
# what result files recorded as config.run_settings.diagnosis.fine_rule for the default before there was a choice:
# kept, so those files still resume (a different string would be a different setting)
LEGACY_DEFAULT_SETTING = "shared class group"


@dataclass(frozen=True)
class FineRelation:
    """One rule resolved for one task: ``fine(label, pred)`` and what the result records about it.
    ``applies`` False: the rule has nothing to go on for this task (no groups, no class matched ImageNet, no
    class embeddings), so it calls no error fine-grained and its sensitivity entry is null."""

    spec: str
    description: str
    applies: bool
    n_classes: int
    unmatched: int  # classes the rule knows nothing about: never fine-grained
    test: Callable[[int, int], bool] = field(repr=False)
    groups: dict[int, str] | None = field(default=None, repr=False)  # the partition, for partition rules

    def fine(self, label: int, pred: int) -> bool:
        return label != pred and self.test(label, pred)

    def record(self, status: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.spec,
            "status": status,
            "description": self.description,
            "applies": self.applies,
            "classes": self.n_classes,
            "unmatched": self.unmatched,
        }
        if self.groups is not None:
            out.update(group_stats(self.groups))
        return out


def group_stats(groups: dict[int, str]) -> dict[str, int]:
    """How coarse a partition is: its number of groups, the classes alone in theirs, the largest group's size."""
    sizes = Counter(groups.values())
    return {
        "groups": len(sizes),
        "singletons": sum(1 for n in sizes.values() if n == 1),
        "largest_group": max(sizes.values(), default=0),
    }


def _partition(spec: str, description: str, groups: dict[int, str] | None, unmatched: int, n: int) -> FineRelation:
    def test(label: int, pred: int) -> bool:
        return share_group(groups, label, pred)

    applies = groups is not None and unmatched < n
    return FineRelation(spec, description, applies, n, unmatched, test, groups)


def is_fine(relation: FineRelation | dict[int, Any] | None, label: int, pred: int) -> bool:
    """``pred`` a fine-grained confusion of ``label`` under a resolved rule, or a plain class-groups mapping."""
    if isinstance(relation, FineRelation):
        return relation.fine(label, pred)
    return share_group(relation, label, pred)


def pairs_text(pairs: Iterable[tuple[int, int]]) -> str:
    """The (label, pred) pairs of a result's errors that a rule calls fine-grained, as the result records them
    (``config.diagnosis.fine_rules[rule].fine_pairs``, sample log version 3): "label:pred", sorted, one space
    apart. A rule relates label and prediction only, so these pairs are all ``rescore`` needs of it, not a
    ``fine_by_rule`` entry on every error's log line; one string, so the indented result file holds it on one
    line (a 1000-class task's thousands of pairs as JSON lists would take four lines each)."""
    return " ".join(f"{label}:{pred}" for label, pred in sorted(set(pairs)))


def read_pairs(text: Any) -> frozenset[tuple[int, int]]:
    """:func:`pairs_text` read back; a ValueError naming the first token that is not "label:pred"."""
    if not isinstance(text, str):
        raise ValueError(f"fine_pairs: expected a string of label:pred pairs, got {type(text).__name__}")
    out = set()
    for token in text.split(" ") if text else ():
        label, sep, pred = token.partition(":")
        if not (sep and label.isascii() and label.isdigit() and pred.isascii() and pred.isdigit()):
            raise ValueError(f"fine_pairs: {token[:40]!r} is not label:pred")
        out.add((int(label), int(pred)))
    return frozenset(out)


# ---- the rules ----------------------------------------------------------------------------------------------------
class FineRule:
    """A fine-grained rule: ``kind``, the meaning of the number after ``:`` (``param``; None: it takes none),
    and :meth:`relation` for one task."""

    kind: ClassVar[str]
    param: ClassVar[str | None] = None
    status: ClassVar[str] = "alternative"

    def __init__(self, value: int | None = None):
        self.value = value

    @property
    def spec(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value}"

    def relation(self, task: TaskConfig | None, classnames: list[str], classifier: Any = None) -> FineRelation:
        raise NotImplementedError


FINE_RULES: dict[str, type[FineRule]] = {}  # kind -> rule class (``--fine-rule`` accepts these)


def fine_rule(cls: type[FineRule]) -> type[FineRule]:
    FINE_RULES[cls.kind] = cls
    return cls


@fine_rule
class GroupsRule(FineRule):
    """The task's ``class_groups``: today's and the default rule, inferred (the paper does not state its own)."""

    kind = "groups"
    status = "inferred: the paper's rule is unknown"

    def relation(self, task: TaskConfig | None, classnames: list[str], classifier: Any = None) -> FineRelation:
        groups = None if task is None else class_groups(task, classnames)
        if task is None or groups is None:
            return _partition(self.spec, "the task has no class_groups", None, 0, len(classnames))
        unmatched = sum(1 for g in groups.values() if g.startswith(UNMATCHED))
        return _partition(self.spec, class_groups_rule(task, classnames) or "", groups, unmatched, len(classnames))


class _WordNetRule(FineRule):
    """A partition of the ImageNet classes from the primary hypernym chains, applied through name matching."""

    def imagenet_groups(self, tree: WordNetTree) -> list[str]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def relation(self, task: TaskConfig | None, classnames: list[str], classifier: Any = None) -> FineRelation:
        by_imagenet = self.imagenet_groups(wordnet_tree())
        indices = imagenet_indices(classnames)  # once: name matching is the costly part on 100k classes
        groups = {}
        for i, (name, index) in enumerate(zip(classnames, indices)):
            groups[i] = f"{UNMATCHED}{i}:{name}" if index is None else by_imagenet[index]  # alone, whatever the name
        unmatched = sum(1 for index in indices if index is None)
        note = f"; {unmatched} of {len(classnames)} classes matched no ImageNet class (never fine-grained)"
        return _partition(self.spec, self.describe() + (note if unmatched else ""), groups, unmatched, len(classnames))


@fine_rule
class WordNetCapRule(_WordNetRule):
    kind, param = "wordnet-cap", "N"

    def imagenet_groups(self, tree: WordNetTree) -> list[str]:
        assert self.value is not None
        return tree.cut(self.value)

    def describe(self) -> str:
        return (
            f"group = the highest synset on the class's primary WordNet 3.0 hypernym chain covering at most "
            f"{self.value} of the 1000 ImageNet-1k classes; fine-grained when label and prediction share a group"
        )


@fine_rule
class WordNetLcaRule(_WordNetRule):
    """Lowest common ancestor at depth >= D. On a tree, that holds exactly when the two chains share their
    synset at depth D, so the rule is the partition by that synset (a class shallower than D is alone)."""

    kind, param = "wordnet-lca", "D"

    def imagenet_groups(self, tree: WordNetTree) -> list[str]:
        assert self.value is not None
        d = self.value
        return [chain[d] if len(chain) > d else f"shallow:{chain[-1]}" for chain in tree.chains]

    def describe(self) -> str:
        return (
            f"fine-grained when the lowest common ancestor of label and prediction on their primary WordNet 3.0 "
            f"hypernym chains lies at depth >= {self.value} (entity = 0)"
        )


@fine_rule
class TextNeighboursRule(FineRule):
    """The model's own view of similarity: the K nearest classes by cosine of the class text embeddings."""

    kind, param = "text-neighbours", "K"

    def relation(self, task: TaskConfig | None, classnames: list[str], classifier: Any = None) -> FineRelation:
        assert self.value is not None
        n = len(classnames)
        if classifier is None:
            return FineRelation(self.spec, "no class embeddings", False, n, n, lambda a, b: False)
        neighbours = nearest_classes(classifier, self.value)
        description = (
            f"fine-grained when the prediction is one of the {self.value} classes whose text embeddings (the "
            f"model's classifier) are closest, by cosine, to the label's"
        )
        return FineRelation(self.spec, description, n > 1, n, 0, lambda a, b: b in neighbours[a])


class NearestClasses:
    """Per class, its ``k`` nearest other classes by cosine of the (D, C) class embeddings; ties by index.

    Computed per label when first asked and kept: memory is the (D, C) embeddings plus ``k`` indices per label
    asked, never a C x C matrix (100,000 classes would need 75 GiB for it), and only the labels of errors are
    ever asked. ``neighbours[a]`` is the frozenset of ``a``'s neighbours."""

    def __init__(self, classifier: Any, k: int) -> None:
        w = np.asarray(classifier.detach().cpu().double() if hasattr(classifier, "detach") else classifier, float)
        self.w = w / np.clip(np.linalg.norm(w, axis=0, keepdims=True), 1e-12, None)
        self.k = max(0, min(k, self.w.shape[1] - 1))
        self._found: dict[int, frozenset[int]] = {}

    def __len__(self) -> int:
        return int(self.w.shape[1])

    def __getitem__(self, label: int) -> frozenset[int]:
        found = self._found.get(label)
        if found is None:
            found = self._found[label] = self._nearest(label)
        return found

    def _nearest(self, label: int) -> frozenset[int]:
        """The ``k`` largest cosines but the label's own (a stable sort's first ``k``, in O(C) memory and time)."""

        if self.k == 0:
            return frozenset()
        sims = self.w.T @ self.w[:, label]
        sims[label] = -np.inf
        kth = np.partition(sims, len(sims) - self.k)[len(sims) - self.k]  # the k-th largest value
        above = np.flatnonzero(sims > kth)
        ties = np.flatnonzero(sims == kth)[: self.k - len(above)]  # equal cosines: the lowest indices, as a stable sort
        return frozenset(int(j) for j in (*above, *ties))


def nearest_classes(classifier: Any, k: int) -> NearestClasses:
    """Per class, its ``k`` nearest other classes by cosine of the class embeddings (lazily, see the class)."""
    return NearestClasses(classifier, k)


# ---- the WordNet tree ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WordNetTree:
    """Each ImageNet class's primary hypernym chain, root first (synset ids ``nXXXXXXXX``)."""

    chains: list[list[str]]
    names: dict[str, str]

    def cut(self, cap: int) -> list[str]:
        """Per class: the highest synset on its chain covering at most ``cap`` classes (itself if none)."""
        return _cut(tuple(tuple(c) for c in self.chains), cap)


@cache
def _cut(chains: tuple[tuple[str, ...], ...], cap: int) -> list[str]:
    return cap_groups([list(reversed(c)) for c in chains], cap)


def cap_groups(paths: list[list[str]], cap: int) -> list[str]:
    """Per class (path: the class first, then its hypernyms up to the root): the highest synset on the path
    covering at most ``cap`` classes. The one implementation of the cut (``scripts/make_class_groups.py`` too)."""
    covered = Counter(a for p in paths for a in p)
    return [max((a for a in p if covered[a] <= cap), key=p.index, default=p[0]) for p in paths]


@cache
def wordnet_tree() -> WordNetTree:
    data = named("reference", "imagenet1k_hypernyms")
    parents: dict[str, str | None] = data["parents"]
    chains = []
    for wnid in named("reference", "imagenet1k_wnids"):
        chain = [wnid]
        while parents.get(chain[-1]) is not None and len(chain) < 100:
            chain.append(parents[chain[-1]])
        chains.append(list(reversed(chain)))
    return WordNetTree(chains, dict(data["names"]))


# ---- parsing ------------------------------------------------------------------------------------------------------
def usage() -> str:
    return ", ".join(k if c.param is None else f"{k}:{c.param}" for k, c in FINE_RULES.items())


def parse_fine_rule(spec: str) -> FineRule:
    """``kind`` or ``kind:N`` as a rule; a one-line UsageError (with the closest kind) for anything else."""
    kind, sep, value = str(spec).strip().partition(":")
    cls = FINE_RULES.get(kind)
    if cls is None:
        close = difflib.get_close_matches(kind, list(FINE_RULES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0] + sep + value!r}?" if close else ""
        raise UsageError(f"unknown --fine-rule {spec!r}: choose from {usage()}{hint}")
    if cls.param is None:
        if sep:
            raise UsageError(f"--fine-rule {spec!r}: {kind} takes no number; use --fine-rule {kind}")
        return cls()
    if not value.strip().isdigit() or not 1 <= int(value) <= 10_000:
        raise UsageError(f"--fine-rule {spec!r}: expected {kind}:{cls.param} with {cls.param} a whole number >= 1")
    return cls(int(value))
