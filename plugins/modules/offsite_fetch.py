#!/usr/bin/python
# Copyright: tradingbot.ops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: offsite_fetch
short_description: Fetch, decrypt and verify an off-site backup copy for the local restore
version_added: 0.2.0
description:
  - Lists the off-site store that the copy job's configuration file names (an S3 bucket under Object Lock,
    see C(docs/offsite.md)), chooses a copy, downloads it, decrypts it with age and verifies it into
    O(dest_dir). There M(tradingbot.ops.db_restore) takes over with its plan, safety copy, validation and
    rollback (the playbook C(tradingbot.ops.restore) with C(restore_source=offsite) does both).
  - "Before anything is written: the copy's manifest must be in the store, and the identity's recipient must
    match the manifest's C(recipient_fingerprint). While downloading: the ciphertext's SHA-256 and size must
    equal the manifest's, age authenticates every chunk, and the plaintext's SHA-256 and size must equal the
    backup's own manifest. Any refusal leaves nothing in O(dest_dir)."
  - "The identity never reaches argv, a log or the result: age reads it from a 0600 file in a private 0700
    directory (in RAM, C(/dev/shm), when there is one), which is removed when the module ends, failed or not."
  - A copy already in O(dest_dir) whose SHA-256 matches its manifest is not fetched again.
author:
  - tradingbot.ops maintainers (@tradingbot)
requirements:
  - age (C(age) and C(age-keygen)) on the host
  - boto3 for the Python that runs the module (Debian's C(python3-boto3))
attributes:
  check_mode:
    support: full
    description:
      - Lists the store, names the copy it would fetch and returns its manifest facts, without downloading.
      - With O(identity), also checks that the identity matches the copy's recipient.
  diff_mode:
    support: none
    description: Returns no diff; RV(backup) and RV(path) say what is fetched where.
options:
  config:
    description:
      - The off-site copy job's JSON configuration on the host (C(/etc/tradingbot/offsite.json), written by
        the role C(tradingbot_offsite)). It names the store, the bucket, the prefix, and the S3 credentials
        file (a root-only 0600 JSON key pair); it holds no secret itself.
      - A missing file means off-site copies were never set up on this host; the error says so.
    type: path
    required: true
    version_added: 0.2.0
  identity:
    description:
      - The age identity (C(AGE-SECRET-KEY-1...)) the copies were encrypted to, from a vault or a file on
        the controller. The host holds only the recipient, so it cannot decrypt without it.
      - Required unless in check mode.
    type: str
    version_added: 0.2.0
  backup:
    description:
      - The backup's name, for example C(sqlite_backup_20250101_020000.db.gz), or V(latest) for the newest
        complete copy (ciphertext and manifest) of O(engine).
      - A named copy whose manifest is missing is refused; V(latest) passes over it and names it in
        RV(incomplete). A named copy that is refused is never replaced by another one.
    type: str
    default: latest
    version_added: 0.2.0
  engine:
    description:
      - Only copies of this engine's backups. Omitted, the configuration's C(engine) applies, and without
        one every engine.
    type: str
    choices: [sqlite, postgresql]
    version_added: 0.2.0
  dest_dir:
    description:
      - An existing directory on the host to fetch into, for example a fresh staging directory under the
        backup directory. The backup and its manifest are written there (mode 0600).
    type: path
    required: true
    version_added: 0.2.0
notes:
  - A refusal for a tampered copy means the current version of the ciphertext differs from what was
    uploaded. The locked original versions are still in the store (see C(docs/offsite.md)).
seealso:
  - module: tradingbot.ops.db_restore
"""

EXAMPLES = r"""
- name: Name the copy a restore would use
  tradingbot.ops.offsite_fetch:
    config: /etc/tradingbot/offsite.json
    engine: sqlite
    dest_dir: /opt/tradingbot/backups/.offsite-restore
  check_mode: true
  register: planned

- name: Fetch the newest copy for the local restore
  tradingbot.ops.offsite_fetch:
    config: /etc/tradingbot/offsite.json
    identity: "{{ vault_tradingbot_offsite_identity }}"
    engine: postgresql
    dest_dir: "{{ staging.path }}"
  register: fetched

- name: Restore it
  tradingbot.ops.db_restore:
    engine: postgresql
    database: tradingbot
    backup_dir: "{{ staging.path }}"
    backup_file: "{{ fetched.backup.name }}"
"""

RETURN = r"""
backup:
  description: The chosen copy, with the facts of its off-site manifest.
  returned: success
  type: dict
  sample:
    name: sqlite_backup_20250101_020000.db.gz
    engine: sqlite
    format: sqlite
    compression: gzip
    size: 52341
    uncompressed_size: 131072
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    created: "2025-01-01T02:00:03Z"
    verified: true
    tables: {trades: 1200}
    object: sqlite_backup_20250101_020000.db.gz.age
    recipient_fingerprint: sha256:1d4c...
    ciphertext_sha256: 5e88...
    ciphertext_size: 52581
    version_id: 3a1f...
    locked_until: "2026-02-05T02:00:10Z"
    uploaded_at: "2025-01-01T02:00:10Z"
path:
  description: Where the backup is (or, in check mode, would be) in O(dest_dir); its manifest is beside it.
  returned: success
  type: path
  sample: /opt/tradingbot/backups/.offsite-restore-x1y2/sqlite_backup_20250101_020000.db.gz
source:
  description: The store, as C(s3://bucket/prefix at endpoint).
  returned: success
  type: str
incomplete:
  description: With O(backup=latest), the copies in the store without a manifest, which were passed over.
  returned: success
  type: list
  elements: str
sha256:
  description: SHA-256 of the decrypted backup, equal to its manifest's.
  returned: when fetched
  type: str
size:
  description: Size of the decrypted backup in bytes.
  returned: when fetched
  type: int
msg:
  description: What was done, or would be done in check mode.
  returned: always
  type: str
"""

# Imports follow the documentation strings, as ansible-doc expects.
from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import TradingbotError  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.offsite_fetch import LATEST, fetch_for_restore  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "required": True},
            "identity": {"type": "str", "no_log": True},
            "backup": {"type": "str", "default": LATEST},
            "engine": {"type": "str", "choices": ["sqlite", "postgresql"]},
            "dest_dir": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    if not params["identity"] and not module.check_mode:
        module.fail_json(msg="identity is required to decrypt an off-site copy (only check mode does without it)")
    try:
        result = fetch_for_restore(
            params["config"],
            params["identity"],
            params["dest_dir"],
            backup=params["backup"],
            engine=params["engine"],
            check_mode=module.check_mode,
        )
    except TradingbotError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
