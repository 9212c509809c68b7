"""Derive the ImageNet-1k class data shipped in ``harness/resources`` from WordNet 3.0 (development time only).

Writes:
  resources/class_groups/imagenet1k.json   class index -> fine-grained group (the rule below)
  resources/classnames/imagenet1k_wordnet.json   the 1000 WordNet synonym strings ("tench, Tinca tinca")
  resources/reference/imagenet1k_wnids.json      the 1000 wnids, in label order
  resources/reference/imagenet1k_hypernyms.json  the primary hypernym chains of the 1000 classes, as parent links
                                                 and names (what ``--fine-rule wordnet-cap:N|wordnet-lca:D`` read
                                                 at run time, where WordNet itself is not installed)

Inputs: the WordNet 3.0 database as Debian's ``wordnet-base`` package installs it (``/usr/share/wordnet``;
parsed directly, no nltk) and the list of the 1000 ImageNet wnids in label order (timm ships one; any file with
one ``nXXXXXXXX`` per line works; without either, the shipped ``imagenet1k_wnids.json``). The synonym strings
are rebuilt from WordNet's lemmas, so they do not depend on the wnid file's source beyond the ids.

The group rule (why: a partition is needed so that "label and prediction share a group" is a plain lookup, and a
fixed WordNet depth does not work because depth varies a lot between branches - dog breeds sit ~6 levels below
artifacts of similar specificity):
  Follow each class's *primary* hypernym path (the first-listed hypernym at every step) up to the root. Its
  group is the highest synset on that path that covers at most K (=40) of the 1000 classes (a class covers
  itself, so a class with no such ancestor is alone). Because the primary paths form a tree, the result is a
  partition of the label space. Example: jaguar -> "feline" with tabby, tiger cat, Persian cat, Siamese cat,
  Egyptian cat, cougar, lynx, leopard, snow leopard, lion, tiger, cheetah. The cut itself is
  ``covar_harness.diagnosis.fine_rules.cap_groups``, the same code the ``wordnet-cap:N`` rule runs.

Usage: python scripts/make_class_groups.py [--wordnet /usr/share/wordnet] [--wnids FILE] [--max-classes 40]
       [--out DIR]   (DIR: a resources folder; default the package's)
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from covar_harness.diagnosis.fine_rules import cap_groups

RESOURCES = Path(__file__).resolve().parents[1] / "harness" / "resources"
DEFAULT_WNIDS = "timm/data/_info/imagenet_synsets.txt"


def parse_nouns(data_noun: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, noun hypernym offsets incl. instance hypernyms), from WordNet's data.noun format."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for line in data_noun.read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):  # licence header
            continue
        fields = line.split(" | ", 1)[0].split()
        n_words = int(fields[3], 16)
        words = [w.replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]
        i = 4 + 2 * n_words
        hypernyms = []
        for j in range(int(fields[i])):
            symbol, offset, pos, _ = fields[i + 1 + 4 * j : i + 5 + 4 * j]
            if symbol in ("@", "@i") and pos == "n":
                hypernyms.append(offset)
        out[fields[0]] = (words, hypernyms)
    return out


def primary_path(offset: str, nouns: dict) -> list[str]:
    """The class itself, then its first-listed hypernym, and so on up to the root."""
    path = [offset]
    while nouns[path[-1]][1]:
        path.append(nouns[path[-1]][1][0])
    return path


def hypernym_tree(paths: list[list[str]], nouns: dict) -> dict:
    """The primary chains as parent links (a tree: each synset has one primary hypernym) plus each synset's first
    lemma: every synset on a chain once, so the 1000 chains take ~50 KB instead of one list per class."""
    parents: dict[str, str | None] = {}
    for path in paths:
        for child, parent in zip(path, [*path[1:], None]):
            parents["n" + child] = None if parent is None else "n" + parent
    return {
        "source": "WordNet 3.0 (Debian wordnet-base), primary hypernym chains (first-listed hypernym at each "
        "step, instance hypernyms included), scripts/make_class_groups.py",
        "parents": dict(sorted(parents.items())),
        "names": {s: nouns[s[1:]][0][0] for s in sorted(parents)},
    }


def read_wnids(explicit: str | None) -> list[str]:
    """The 1000 wnids in label order: ``--wnids FILE``, else timm's list, else the shipped one."""
    path = Path(explicit) if explicit else None
    if path is None:
        import site

        found = [Path(b) / DEFAULT_WNIDS for b in site.getsitepackages() if (Path(b) / DEFAULT_WNIDS).is_file()]
        path = found[0] if found else RESOURCES / "reference" / "imagenet1k_wnids.json"
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else [w.strip() for w in text.split() if w.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    ap.add_argument("--wnids", default=None)
    ap.add_argument("--max-classes", type=int, default=40)
    ap.add_argument("--out", type=Path, default=RESOURCES)
    args = ap.parse_args()
    out = args.out

    nouns = parse_nouns(Path(args.wordnet) / "data.noun")
    wnids = read_wnids(args.wnids)
    assert len(wnids) == 1000 and len(set(wnids)) == 1000, "expected 1000 distinct wnids"
    offsets = [w[1:] for w in wnids]
    paths = [primary_path(o, nouns) for o in offsets]
    groups = cap_groups(paths, args.max_classes)

    rule = (
        f"group = the highest synset on the class's primary WordNet 3.0 hypernym path (first-listed hypernym "
        f"at each step) that covers at most {args.max_classes} of the 1000 ImageNet-1k classes; "
        f"an error is fine-grained when label and prediction share a group"
    )
    payload = {
        "rule": rule,
        "source": "WordNet 3.0 (Debian wordnet-base), scripts/make_class_groups.py",
        "max_classes_per_group": args.max_classes,
        "label_space": "imagenet1k",
        "groups": {str(i): "n" + g for i, g in enumerate(groups)},
        "group_names": {"n" + g: nouns[g][0][0] for g in sorted(set(groups))},
    }
    for kind in ("class_groups", "classnames", "reference"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    (out / "class_groups" / "imagenet1k.json").write_text(json.dumps(payload, indent=1) + "\n")
    names = [", ".join(nouns[o][0]) for o in offsets]
    (out / "classnames" / "imagenet1k_wordnet.json").write_text(json.dumps(names, indent=0) + "\n")
    (out / "reference" / "imagenet1k_wnids.json").write_text(json.dumps(wnids, indent=0) + "\n")
    tree = hypernym_tree(paths, nouns)
    (out / "reference" / "imagenet1k_hypernyms.json").write_text(json.dumps(tree, separators=(",", ":")) + "\n")
    sizes = Counter(groups)
    print(f"{len(sizes)} groups; largest: " + ", ".join(f"{nouns[g][0][0]} ({n})" for g, n in sizes.most_common(5)))


if __name__ == "__main__":
    main()
