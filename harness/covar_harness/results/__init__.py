"""Result files: paths, atomic writes and provenance (files), the schema check (validation), strict submission
checks (submission), rescoring from sample logs (rescore) and paired comparisons (compare)."""
