"""A method name is found in the catalog, the one registry: never by walking ``Attributor`` subclasses."""

from __future__ import annotations

import pytest

from covar_harness import hookimpl
from covar_harness.attribution.base import Attributor, find_attributor
from covar_harness.attribution.cci import CCI
from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError


class Unregistered(Attributor):
    """Defined, but no plugin registers it."""

    name = "never-registered"


class CustomStepPlugin:
    """A plugin whose attributor is a plain step factory (the documented minimum), not an Attributor class."""

    @staticmethod
    @hookimpl
    def register_attributors(register):
        register("custom-step", lambda **settings: object(), description="a step without importance maps")


def test_a_registered_name_gives_its_class_and_a_class_is_itself():
    assert find_attributor("cci") is CCI
    assert find_attributor(CCI) is CCI and find_attributor(Unregistered) is Unregistered


def test_a_class_no_plugin_registered_is_not_found_by_name():
    with pytest.raises(UsageError, match="never-registered"):
        find_attributor("never-registered")


def test_an_unknown_name_gets_close_matches_in_one_line():
    with pytest.raises(UsageError) as err:
        find_attributor("ccci")
    assert "did you mean 'cci'" in str(err.value) and "\n" not in str(err.value)


def test_a_registered_custom_step_is_refused_as_a_map_method():
    catalog = load_catalog(allow="", extra_plugins=[CustomStepPlugin()])
    assert catalog.attributors.entry("custom-step").name == "custom-step"
    with pytest.raises(UsageError, match="custom step, not an Attributor"):
        find_attributor("custom-step", catalog)
