"""``python -m covar_harness``: the same entry point as the ``covar-harness`` command."""

from covar_harness.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
