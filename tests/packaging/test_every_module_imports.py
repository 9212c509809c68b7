"""Every module of the three packages imports on its own, in a fresh interpreter.

Why: a module that only imports after another one happened to load first (a hidden cycle, or a name that moved
stage) works in the suite's shared process and fails for the user who imports it first. A fresh interpreter per
package walk catches both, and the packages are found the way setuptools finds them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The interpreter under test sees the same sources as this one (a worktree's, not whatever is installed).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

PACKAGES = ["covar_harness", "covar_harness_plugins", "covar_harness_tasks"]

WALK = """
import importlib, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_of_the_package_imports(package):
    out = subprocess.run([sys.executable, "-c", WALK, package], capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) > 3


ONE = """
import importlib, pkgutil, subprocess, sys
pkg = importlib.import_module(sys.argv[1])
bad = []
for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    r = subprocess.run([sys.executable, "-c", f"import {m.name}"], capture_output=True, text=True)
    if r.returncode:
        bad.append(m.name + ": " + (r.stderr.strip().splitlines() or ["?"])[-1])
print("\\n".join(bad))
"""


@pytest.mark.slow
def test_each_module_imports_first():
    """Each module imported first, alone: no module relies on another having been imported before it."""
    out = subprocess.run(
        [sys.executable, "-c", ONE, "covar_harness"], capture_output=True, text=True, timeout=900, env=ENV
    )
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr[-2000:]
