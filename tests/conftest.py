"""Make the checkout importable as ansible_collections.tradingbot.ops.

Unit tests import plugin code by its collection path, as ansible-core does. Outside an
ansible_collections/ tree, a symlink farm in the pytest cache provides that path.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _collection_root():
    for parent in REPO.parents:
        if parent.name == "ansible_collections":
            return parent.parent
    root = REPO / ".pytest_cache" / "collections"
    link = root / "ansible_collections" / "tradingbot" / "ops"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(REPO, link)
    return root


sys.path.insert(0, str(_collection_root()))
