"""Run one point-in-time restore with this checkout's module code, as sqlite_pitr / pg_pitr would.

    python3 benchmarks/pitr_driver.py sqlite OPTIONS_JSON
    python3 benchmarks/pitr_driver.py postgresql OPTIONS_JSON

OPTIONS_JSON holds the module's parameters (a 0600 file: the SQLite options carry the age
identity). The modules are thin AnsibleModule wrappers around ``sqlite_pitr.restore(params)``
and ``pgbackrest_pitr.run_pitr(params)``; this calls those directly, so the figure leaves out
Ansible's own start-up, not any of the module's steps. Prints a JSON summary on stdout.
"""

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def collection_root():
    """Where the checkout is importable as ansible_collections.tradingbot.ops (tests/conftest.py's way)."""
    spec = importlib.util.spec_from_file_location("tradingbot_tests_conftest", REPO / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return str(conftest._collection_root())


sys.path.insert(0, collection_root())

from ansible_collections.tradingbot.ops.plugins.module_utils import pgbackrest_pitr, sqlite_pitr  # noqa: E402


def main(argv):
    with open(argv[2], encoding="utf-8") as handle:
        params = json.load(handle)
    if argv[1] == "sqlite":
        result = sqlite_pitr.restore(params)
        summary = {"staging_file": result["staging_file"], "check": result["check"]}
    else:
        result = pgbackrest_pitr.run_pitr(params)
        summary = {"safety_copy": result["safety_copy"], "timeline": result["timeline"], "rows": result["row_counts"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
