#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: db_backup
short_description: Take a verified, checksummed SQLite or PostgreSQL backup and apply retention
version_added: 0.1.0
description:
  - Takes a consistent backup of a live SQLite database (online backup API in one step, then
    C(PRAGMA integrity_check)) or of a PostgreSQL database (C(pg_dump), plain SQL or custom format).
  - Streams it through gzip or zstd in constant memory into a hidden temp file in O(backup_dir),
    fsyncs it, decodes it completely to verify it, writes a C(.manifest.json) sidecar (SHA-256, sizes,
    source, timestamps, tool versions, per-table row counts, verification result), renames the file
    into place and fsyncs the directory.
  - Names are C(sqlite_backup_YYYYMMDD_HHMMSS.db.gz) and C(postgres_backup_YYYYMMDD_HHMMSS.sql.gz)
    (C(.zst) for zstd, C(.dump) for custom format), in UTC.
  - Retention runs only after the new backup succeeded, deletes only files this collection created,
    and never deletes the newest O(retention_keep_verified) verified backups.
  - Runs hold a flock on the backup directory, so two runs on the same target never interleave.
  - The same engine runs on hosts from the backup timer as C(python3 -m tradingbot_ops.backup_cli
    --config FILE), where FILE is a JSON object of these options.
author:
  - tradingbot.ops maintainers (@tradingbot)
extends_documentation_fragment:
  - tradingbot.ops.database
attributes:
  check_mode:
    support: full
    description: Reports the path that would be written and the backups retention would delete; touches nothing.
  diff_mode:
    support: none
    description: Backups are new files; there is nothing to diff.
options:
  format:
    description:
      - PostgreSQL dump format. V(plain) is SQL text, as the original script wrote; V(custom) is
        C(pg_dump --format=custom), verified with C(pg_restore -f /dev/null).
      - With V(custom) and O(compression=gzip), pg_dump compresses inside the archive and the file is
        named C(.dump); with O(compression=zstd) the archive is written uncompressed and wrapped in zstd (C(.dump.zst)).
      - Only V(plain) applies to O(engine=sqlite).
    type: str
    default: plain
    choices: [plain, custom]
    version_added: 0.1.0
  compression:
    description:
      - V(gzip) as the original script; V(zstd) is faster and smaller and needs the C(zstd) binary
        (the module fails clearly when it is absent); V(none) stores the file uncompressed.
    type: str
    default: gzip
    choices: [gzip, zstd, none]
    version_added: 0.1.0
  compression_level:
    description:
      - Compression level, 1-9 for gzip (default 6) and 1-19 for zstd (default 3).
    type: int
    version_added: 0.1.0
  mode:
    description:
      - File mode of the backup and its manifest, as an octal string.
    type: str
    default: '0640'
    version_added: 0.1.0
  owner:
    description:
      - Owner (name or uid) of the backup and its manifest. Unset keeps the running user.
    type: str
    version_added: 0.1.0
  group:
    description:
      - Group (name or gid) of the backup and its manifest. Unset keeps the running user's group.
    type: str
    version_added: 0.1.0
  retention_days:
    description:
      - Keep backups younger than this many days (the original's 7 days). V(0) switches the age rule off.
      - A backup is kept when any retention rule keeps it; the others are deleted.
    type: int
    default: 7
    version_added: 0.1.0
  retention_count:
    description:
      - Keep the newest this many backups. V(0) switches the rule off.
    type: int
    default: 0
    version_added: 0.1.0
  retention_daily:
    description:
      - Keep the newest backup of each of the last this many days that have backups (GFS). V(0) switches it off.
    type: int
    default: 0
    version_added: 0.1.0
  retention_weekly:
    description:
      - Keep the newest backup of each of the last this many ISO weeks that have backups (GFS).
    type: int
    default: 0
    version_added: 0.1.0
  retention_monthly:
    description:
      - Keep the newest backup of each of the last this many months that have backups (GFS).
    type: int
    default: 0
    version_added: 0.1.0
  retention_keep_verified:
    description:
      - Always keep the newest this many verified backups, whatever their age, so that a week of failed
        backups never leaves the host with only the one good backup taken after it. At least 1.
    type: int
    default: 3
    version_added: 0.1.0
  retention_delete_legacy:
    description:
      - Let retention delete the original system's backups (C(sqlite_backup_*.db.gz) and
        C(postgres_backup_*.sql.gz) without a manifest, listed as legacy, unverified) when no age or count
        rule keeps them.
      - By default they are never deleted.
    type: bool
    default: false
    version_added: 0.2.0
  lock_timeout:
    description:
      - Seconds to wait for another backup or restore of the same engine in O(backup_dir) to finish.
        V(0) fails at once. The failure message names the pid holding the lock.
    type: int
    default: 300
    version_added: 0.1.0
  log_file:
    description:
      - Backup log to append one line per event to, for example C(/opt/tradingbot/logs/backup.log).
        Passwords never appear in it.
    type: path
    version_added: 0.1.0
  metrics_dir:
    description:
      - Directory of the Prometheus node_exporter textfile collector. When set, C(tradingbot_backup_ENGINE.prom)
        is written there atomically after every run, with the last success time, duration, size, compression ratio,
        result and number of files deleted.
    type: path
    version_added: 0.1.0
  content_digest:
    description:
      - For SQLite, also record a SHA-256 over every table's rows in the manifest, so a restore can compare
        content and not only row counts. Costs a full read and sort of every table.
    type: bool
    default: false
    version_added: 0.1.0
  pg_retries:
    description:
      - Retries of the PostgreSQL connection check before giving up, through the circuit breaker.
    type: int
    default: 3
    version_added: 0.1.0
  pg_retry_delay:
    description:
      - Seconds before the first retry; doubled for each further retry, capped at 30.
    type: float
    default: 2.0
    version_added: 0.1.0
notes:
  - The PostgreSQL password reaches the tools through the environment only; it is never on a command line.
  - Rows are counted in the same snapshot pg_dump uses (C(pg_export_snapshot)), so the manifest's
    row counts match the dump even while the application writes.
seealso:
  - module: tradingbot.ops.db_restore
"""

EXAMPLES = r"""
- name: Back up the SQLite database before a migration
  tradingbot.ops.db_backup:
    engine: sqlite
    database: /opt/tradingbot/data/tradingbot.db
    backup_dir: /opt/tradingbot/backups
    owner: tradingbot
    group: tradingbot
    log_file: /opt/tradingbot/logs/backup.log

- name: Back up PostgreSQL in custom format with zstd, keeping 7 daily, 4 weekly and 6 monthly backups
  tradingbot.ops.db_backup:
    engine: postgresql
    database: tradingbot
    pg_host: 127.0.0.1
    pg_user: tradingbot
    pg_password: "{{ tradingbot_postgresql_password }}"
    backup_dir: /opt/tradingbot/backups
    format: custom
    compression: zstd
    retention_days: 0
    retention_daily: 7
    retention_weekly: 4
    retention_monthly: 6
    metrics_dir: /var/lib/prometheus/node-exporter
"""

RETURN = r"""
path:
  description: Path of the backup written (in check mode, the one that would be written).
  returned: always
  type: str
  sample: /opt/tradingbot/backups/sqlite_backup_20250101_020000.db.gz
manifest:
  description: Path of the backup's manifest.
  returned: always
  type: str
  sample: /opt/tradingbot/backups/sqlite_backup_20250101_020000.db.gz.manifest.json
size:
  description: Size of the backup file in bytes.
  returned: success and not check mode
  type: int
  sample: 5512034
sha256:
  description: SHA-256 of the backup file, as recorded in the manifest.
  returned: success and not check mode
  type: str
  sample: 0d1e5b7c9a3f4e2d8b6a1c0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d
uncompressed_size:
  description: Size of the database snapshot or dump before compression, in bytes.
  returned: success and not check mode
  type: int
  sample: 52428800
duration_seconds:
  description: Time taken by the backup, verification included.
  returned: success and not check mode
  type: float
  sample: 3.52
compression_ratio:
  description: RV(uncompressed_size) divided by RV(size).
  returned: success and not check mode
  type: float
  sample: 9.51
tables:
  description: Row count of every table, as recorded in the manifest.
  returned: success and not check mode
  type: dict
  sample: {"trades": 120345, "orders": 5012}
verification:
  description: The verification's result.
  returned: success and not check mode
  type: dict
  contains:
    ok:
      description: Whether the backup verified (always true when the module succeeds).
      type: bool
    method:
      description: What was checked.
      type: str
    detail:
      description: Details of the check.
      type: str
  sample:
    ok: true
    method: full decode (gzip); sha256 of decoded stream equals source
    detail: integrity_check ok; 5832704 bytes decoded
deleted:
  description: Backups deleted by retention (in check mode, those retention would delete).
  returned: always
  type: list
  elements: str
  sample: [/opt/tradingbot/backups/sqlite_backup_20241220_020000.db.gz]
kept:
  description: Backups retention kept.
  returned: success and not check mode
  type: list
  elements: str
  sample: [/opt/tradingbot/backups/sqlite_backup_20250101_020000.db.gz]
"""

import copy  # noqa: E402 - Ansible modules start with their documentation

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.backup import run_backup  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import BackupError  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.options import BACKUP_OPTIONS  # noqa: E402


def main():
    module = AnsibleModule(argument_spec=copy.deepcopy(BACKUP_OPTIONS), supports_check_mode=True)
    try:
        result = run_backup(module.params, check_mode=module.check_mode)
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
