"""Ways to damage a backup on purpose, shared by the functional tests."""

import os

from ansible_collections.tradingbot.ops.plugins.module_utils.catalog import manifest_path, read_manifest
from ansible_collections.tradingbot.ops.plugins.module_utils.fsutil import write_json_atomic


def corrupt_flip(path):
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))


def corrupt_truncate(path):
    os.truncate(path, os.path.getsize(path) - 100)


def corrupt_manifest_checksum(path):
    manifest = read_manifest(path)
    manifest["sha256"] = "0" * 64
    write_json_atomic(manifest_path(path), manifest)
