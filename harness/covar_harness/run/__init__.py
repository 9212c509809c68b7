"""Running models x tasks: the plan, the per-pair pass, batches, caches, part files, distributed pairs, retrieval."""
