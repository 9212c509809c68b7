"""Result files: paths, atomic writes and provenance (files), the schema check (validation) and the strict
submission checks (submission)."""
