"""The package's one export list (``deltaw._EXPORTS``): every name resolves to what its module
defines, no export shares its name with a submodule, and the CLI's start does not import torch."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import pytest

import deltaw


def test_every_export_is_what_its_module_defines():
    assert set(deltaw.__all__) == {"DeltawError", *deltaw._MODULE_OF}
    for name, module in deltaw._MODULE_OF.items():
        assert getattr(deltaw, name) is getattr(importlib.import_module(module), name), name


def test_no_export_is_named_like_a_submodule():
    """Importing ``deltaw.<module>`` binds the module on the package: a function of that name would
    be shadowed (as ``deltaw.amplification`` and ``deltaw.compare`` once were)."""
    submodules = {info.name for info in pkgutil.iter_modules(deltaw.__path__)}
    assert {"amplify", "comparison", "linalg"} <= submodules
    assert not submodules & set(deltaw._MODULE_OF)


@pytest.mark.parametrize("name, module", [("amplification", "deltaw.amplify"), ("compare", "deltaw.comparison")])
def test_importing_a_module_leaves_the_function_public(name, module):
    imported = importlib.import_module(module)
    assert isinstance(imported, types.ModuleType)
    assert getattr(deltaw, name) is getattr(imported, name) and callable(getattr(deltaw, name))
    assert not isinstance(getattr(deltaw, name), types.ModuleType)


def test_unknown_names_raise_attribute_error_and_submodules_load_lazily():
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        deltaw.no_such_thing  # noqa: B018
    assert isinstance(deltaw.linalg, types.ModuleType)


def test_the_cli_start_does_not_import_torch():
    startup = subprocess.run([sys.executable, "-c", "import sys, deltaw.cli.main; print('torch' in sys.modules)"],
                             capture_output=True, text=True)
    assert startup.stdout.strip() == "False", startup.stderr


def test_every_package_folder_is_installed():
    """pyproject lists packages by hand (cli/ and reports/ install under deltaw.*): a new
    subpackage missing there would work in an editable install and vanish from a wheel."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"deltaw.cli": "cli", "deltaw.reports": "reports"}
    found = {".".join(("deltaw",) + p.parent.relative_to(root / "deltaw").parts) for p in root.glob("deltaw/**/__init__.py")}
    found |= {name for name, folder in folders.items() if (root / folder / "__init__.py").exists()}
    assert set(config["packages"]) == found
    assert all(config["package-dir"][name] == folder for name, folder in folders.items())


def test_an_export_is_imported_with_the_collector_paused_and_left_as_found(tmp_path, monkeypatch):
    # The first use of an export imports its module (torch with it) with the cyclic collector
    # paused (deltaw.collector); after it, and after an import that fails, the collector is on.
    import gc

    (tmp_path / "deltaw_probe_module.py").write_text("import gc\nENABLED = gc.isenabled()\nvalue = 7\n")
    (tmp_path / "deltaw_broken_module.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(deltaw._MODULE_OF, "value", "deltaw_probe_module")
    monkeypatch.setitem(deltaw._MODULE_OF, "broken", "deltaw_broken_module")
    try:
        assert gc.isenabled()
        assert deltaw.value == 7
        assert sys.modules["deltaw_probe_module"].ENABLED is False and gc.isenabled()
        with pytest.raises(ImportError, match="broken on purpose"):
            deltaw.broken
        assert gc.isenabled()
    finally:  # the binding __getattr__ made and the probe module go with the test
        vars(deltaw).pop("value", None)
        sys.modules.pop("deltaw_probe_module", None)
