#!/usr/bin/python
# Copyright: tradingbot.ops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: sqlite_pitr
short_description: Restore a SQLite database to a point in time from its Litestream replica, into a staging file
version_added: 0.2.0
description:
  - Lists the Litestream 0.3.13 replica that the role C(tradingbot.ops.tradingbot_litestream) writes to the
    off-site store, and plans the restore of O(target_time). The plan names the generation, the snapshot and
    the range of WAL segments that C(litestream restore) will replay.
  - "A target outside the reachable range is refused before anything is written, with an error that names
    every reachable range. A range runs from a generation's first snapshot to its last upload. Litestream
    starts a new generation when it cannot continue the previous one (for example after a restore)."
  - Otherwise runs C(litestream restore -timestamp TARGET -o STAGING) into a new file in O(staging_dir),
    and checks the file with C(PRAGMA integrity_check). A copy that fails is removed.
  - The live database is never touched. Apply RV(staging_file) through the restore flow (safety copy,
    validation, rollback), for example by taking it as a backup with M(tradingbot.ops.db_backup) into a
    staging backup directory and restoring that with M(tradingbot.ops.db_restore).
  - "The age identity and the S3 secret go to Litestream in a 0600 config file in a private 0700 directory
    (in RAM when /dev/shm is there), which is removed whatever happens. They are never in argv, in the
    environment or in the result."
  - "Precision: Litestream 0.3.13 times every object by its upload time in the store, in whole seconds. A
    restore to T replays the WAL segments uploaded by T. Writes committed in the last sync interval before T
    may be missing, and writes committed less than a second after T may be included."
author:
  - tradingbot.ops maintainers (@tradingbot)
attributes:
  check_mode:
    support: full
    description:
      - Lists the replica and returns the plan (RV(generation), RV(snapshot), RV(wal)), and refuses an
        unreachable target as a real run does. It downloads nothing and needs no O(identity).
  diff_mode:
    support: none
    description: Returns no diff; the plan says what would be restored.
options:
  database:
    description:
      - Path of the live SQLite database that the replica belongs to. Litestream names the replica by it;
        the file itself is neither read nor written, and need not exist (a new host).
    type: path
    required: true
    version_added: 0.2.0
  target_time:
    description:
      - V(latest), or an ISO 8601 time with a zone, such as C(2026-12-01 10:15:00+00:00) or
        C(2026-12-01T10:15:00Z). A time without a zone is refused.
    type: str
    default: latest
    version_added: 0.2.0
  staging_dir:
    description:
      - An existing directory to restore into, best on the database's file system. The copy is named
        C(<database name>.pitr-<UTC stamp with microseconds>), mode 0600.
    type: path
    required: true
    version_added: 0.2.0
  identity:
    description:
      - The age identity (C(AGE-SECRET-KEY-1...)) whose recipient the replica is encrypted to. Required
        unless in check mode.
    type: str
    version_added: 0.2.0
  s3_bucket:
    description: Bucket of the off-site store.
    type: str
    required: true
    version_added: 0.2.0
  s3_path:
    description: The replica's path in the bucket, as the role writes it (C(tradingbot_litestream_s3_path)).
    type: str
    required: true
    version_added: 0.2.0
  s3_endpoint:
    description: The store's URL, such as C(https://s3.example:8443). Empty for AWS.
    type: str
    default: ""
    version_added: 0.2.0
  s3_region:
    description: The store's region.
    type: str
    default: us-east-1
    version_added: 0.2.0
  s3_path_style:
    description: Address the bucket in the path rather than in the host name.
    type: bool
    default: true
    version_added: 0.2.0
  s3_ca_bundle:
    description: A PEM file of the store's CA, for a store with a private certificate.
    type: path
    version_added: 0.2.0
  s3_access_key_id:
    description: Access key of the store.
    type: str
    required: true
    version_added: 0.2.0
  s3_secret_access_key:
    description: Secret key of the store.
    type: str
    required: true
    version_added: 0.2.0
  integrity_check:
    description: V(full) runs C(PRAGMA integrity_check) on the copy, V(quick) runs C(PRAGMA quick_check).
    type: str
    choices: [quick, full]
    default: full
    version_added: 0.2.0
  litestream_binary:
    description: The C(litestream) binary, a path or a name on PATH.
    type: str
    default: litestream
    version_added: 0.2.0
notes:
  - Litestream 0.3.13 only; 0.5 has another format and no working encryption (docs/replication.md).
  - The staging file is left for the caller; remove it once it has been applied.
seealso:
  - module: tradingbot.ops.db_restore
  - module: tradingbot.ops.db_backup
"""

EXAMPLES = r"""
- name: Name what a restore to 10:15 UTC would use
  tradingbot.ops.sqlite_pitr:
    database: /opt/tradingbot/data/tradingbot.db
    target_time: "2026-12-01 10:15:00+00:00"
    staging_dir: /opt/tradingbot/backups/pitr
    s3_bucket: tradingbot-offsite
    s3_path: bot1.example/litestream
    s3_endpoint: https://s3.example:8443
    s3_access_key_id: "{{ vault_offsite_access_key_id }}"
    s3_secret_access_key: "{{ vault_offsite_secret_access_key }}"
  check_mode: true

- name: Restore the newest replicated state into a staging file
  tradingbot.ops.sqlite_pitr:
    database: /opt/tradingbot/data/tradingbot.db
    target_time: latest
    staging_dir: /opt/tradingbot/backups/pitr
    identity: "{{ vault_offsite_age_identity }}"
    s3_bucket: tradingbot-offsite
    s3_path: bot1.example/litestream
    s3_endpoint: https://s3.example:8443
    s3_access_key_id: "{{ vault_offsite_access_key_id }}"
    s3_secret_access_key: "{{ vault_offsite_secret_access_key }}"
  register: pitr
"""

RETURN = r"""
staging_file:
  description: The restored copy (in check mode, where it would be written).
  returned: always
  type: str
  sample: /opt/tradingbot/backups/pitr/tradingbot.db.pitr-20261201_101900_123456
target_time:
  description: The target, normalised to UTC, or C(latest).
  returned: always
  type: str
  sample: "2026-12-01T10:15:00Z"
reachable:
  description: The time ranges a restore can reach, one per generation, oldest first.
  returned: always
  type: list
  elements: dict
  sample:
    - {generation: 965bb989d2f20487, start: "2026-12-01T02:00:01Z", end: "2026-12-01T10:18:57Z"}
generation:
  description: The Litestream generation used.
  returned: always
  type: str
  sample: 965bb989d2f20487
generation_range:
  description: The chosen generation's first and last upload.
  returned: always
  type: dict
  sample: {start: "2026-12-01T02:00:01Z", end: "2026-12-01T10:18:57Z"}
snapshot:
  description: The snapshot the restore starts from, its WAL index and upload time.
  returned: always
  type: dict
  sample: {index: 0, created: "2026-12-01T02:00:01Z"}
wal:
  description:
    - The WAL segments replayed on top of the snapshot, their number and the first and last (index, offset
      and upload time). C(first) and C(last) are null when the snapshot alone is restored.
  returned: always
  type: dict
  sample:
    segments: 412
    first: {index: 0, offset: 0, created: "2026-12-01T02:00:01Z"}
    last: {index: 3, offset: 53592, created: "2026-12-01T10:14:59Z"}
restores_to:
  description: The upload time of the last object replayed, the newest state the copy holds.
  returned: always
  type: str
  sample: "2026-12-01T10:14:59Z"
check:
  description: The integrity pragma that passed on the copy.
  returned: when restored
  type: str
  sample: integrity_check
not_predicted:
  description: In check mode, what only a real run can check.
  returned: always
  type: list
  elements: str
log:
  description: Litestream's log lines of the restore, with any secret cut out.
  returned: when restored
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.litestream import LitestreamError  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.sqlite_pitr import restore  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec={
            "database": {"type": "path", "required": True},
            "target_time": {"type": "str", "default": "latest"},
            "staging_dir": {"type": "path", "required": True},
            "identity": {"type": "str", "no_log": True},
            "s3_bucket": {"type": "str", "required": True},
            "s3_path": {"type": "str", "required": True},
            "s3_endpoint": {"type": "str", "default": ""},
            "s3_region": {"type": "str", "default": "us-east-1"},
            "s3_path_style": {"type": "bool", "default": True},
            "s3_ca_bundle": {"type": "path"},
            "s3_access_key_id": {"type": "str", "required": True, "no_log": True},
            "s3_secret_access_key": {"type": "str", "required": True, "no_log": True},
            "integrity_check": {"type": "str", "choices": ["quick", "full"], "default": "full"},
            "litestream_binary": {"type": "str", "default": "litestream"},
        },
        supports_check_mode=True,
    )
    try:
        result = restore(module.params, check_mode=module.check_mode)
    except LitestreamError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
