"""The package's version is the collection's: the hosts' copy says which release it came from."""

from pathlib import Path

import yaml
from ansible_collections.tradingbot.ops.plugins.module_utils.version import VERSION

GALAXY = Path(__file__).resolve().parents[4] / "galaxy.yml"


def test_version_matches_galaxy_yml():
    assert yaml.safe_load(GALAXY.read_text(encoding="utf-8"))["version"] == VERSION
