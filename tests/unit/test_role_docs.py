"""docs/role-options.md is generated from the argument specs and must be current."""

import importlib.util
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("role_docs", REPO / "tools" / "role-docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_role_options_doc_is_current():
    committed = (REPO / "docs" / "role-options.md").read_text()
    assert committed == load_generator().render(), "run: python tools/role-docs.py > docs/role-options.md"


def test_every_role_option_is_in_the_doc():
    committed = (REPO / "docs" / "role-options.md").read_text()
    for spec_path in REPO.glob("roles/*/meta/argument_specs.yml"):
        for spec in yaml.safe_load(spec_path.read_text())["argument_specs"].values():
            for name in spec.get("options") or {}:
                assert f"`{name}`" in committed, name
