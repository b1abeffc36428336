#!/usr/bin/python
# Copyright: tradingbot.ops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: db_restore
short_description: Restore a verified SQLite or PostgreSQL backup, with a safety copy and automatic rollback
version_added: 0.1.0
description:
  - Restores a backup written by M(tradingbot.ops.db_backup) over a SQLite file or a PostgreSQL database.
  - "Pre-flight: the backup's SHA-256 and size are checked against its manifest, and the file is decoded
    completely (for PostgreSQL, as it is loaded into the candidate database). A mismatch or an unreadable
    file refuses the restore and leaves the live database untouched."
  - "The backup is restored into a candidate first: a temp file in the SQLite database's directory, or a
    fresh PostgreSQL database. The candidate is validated there: an integrity check, row counts table by
    table against the manifest, and the content digest when the manifest records one. A candidate that
    fails validation is discarded and the live database is left as it was."
  - "Only then is the candidate swapped in. The current database is kept as a safety copy. For SQLite
    that is a hard link named C(<database>.pre-restore-<UTC stamp>), so it costs nothing and keeps the
    owner and mode. For PostgreSQL the old database is renamed to C(<database>_pre_restore_<UTC stamp>)
    in the same transaction that renames the candidate to the live name. Any failure after the swap rolls
    back from the safety copy."
  - O(operation=rollback) puts a safety copy back, for a failure found later, such as the service's
    health check. O(operation=list) returns the backups on hand with their manifest data, and the safety
    copies kept.
  - Stop the service that uses the database before a restore. The playbook C(tradingbot.ops.restore) does
    that, asks for confirmation and runs the health check.
author:
  - tradingbot.ops maintainers (@tradingbot)
extends_documentation_fragment:
  - tradingbot.ops.database
attributes:
  check_mode:
    support: full
    description:
      - Reports the chosen backup and the plan, and runs the read-only pre-flight (checksum and full decode).
      - Names, in RV(not_predicted), what only a real run can check, such as the validation of the restored copy.
  diff_mode:
    support: none
    description: Returns no diff; RV(plan) says what is restored over what.
options:
  operation:
    description:
      - V(restore) restores a backup. V(list) lists the backups and safety copies and changes nothing.
        V(rollback) puts O(safety_copy) back as the live database.
    type: str
    choices: [restore, list, rollback]
    default: restore
    version_added: 0.1.0
  backup_file:
    description:
      - Name of the backup to restore, a file directly inside O(backup_dir), for example
        C(sqlite_backup_20250101_020000.db.gz). An absolute path is accepted only when it lies directly in
        O(backup_dir). Anything that leaves the directory, a symlink, or a file without its manifest is
        refused, except a backup of the original system with O(allow_legacy=true).
      - When omitted, the newest verified backup that passes pre-flight (SHA-256 and a full decode) is
        restored. Each newer backup that fails is passed over and named in RV(passed_over) and the log.
    type: str
    version_added: 0.1.0
  allow_legacy:
    description:
      - Allow O(backup_file) to name a backup of the original system, made by
        C(sqlite3 DB ".backup X" && gzip X) or C(pg_dump | gzip), which has no manifest.
      - Such a file is verified before it replaces anything. SQLite gets a full decode and
        C(PRAGMA integrity_check). PostgreSQL gets a trial load into the scratch candidate database with
        C(ON_ERROR_STOP) in one transaction, and pg_dump's completion trailer must be present. Then the
        restore makes the same safety copy, runs the same validation and rolls back the same way as for
        any other backup.
      - Without this option such a file is refused, with an error that names this option. A legacy file is
        never chosen as the latest backup.
    type: bool
    default: false
    version_added: 0.2.0
  safety_copy:
    description:
      - With O(operation=rollback), the safety copy to put back, as returned in RV(safety_copy) by a
        restore. A path for SQLite, a database name for PostgreSQL.
    type: str
    version_added: 0.1.0
  integrity_check:
    description:
      - SQLite check run on the restored copy. V(quick) is C(PRAGMA quick_check). V(full) is
        C(PRAGMA integrity_check), which also checks every index against its table and takes several
        times longer. The backup was integrity-checked when it was taken, and its SHA-256 proves the
        bytes are the same.
    type: str
    choices: [quick, full]
    default: quick
    version_added: 0.1.0
  verify_content_digest:
    description:
      - Compare the restored data's content digest with the manifest's, when the manifest records one.
        This reads every row.
    type: bool
    default: true
    version_added: 0.1.0
  maintenance_db:
    description:
      - PostgreSQL database to connect to while creating, renaming and dropping databases.
    type: str
    default: postgres
    version_added: 0.1.0
  terminate_connections:
    description:
      - Terminate other sessions on the live PostgreSQL database before the swap. PostgreSQL refuses to
        rename a database that has sessions. Without this, any session left makes the swap fail, and
        nothing changes.
    type: bool
    default: true
    version_added: 0.1.0
  lock_timeout:
    description:
      - Seconds to wait for the backup dir's lock, which a running backup or restore holds. V(0) fails at
        once.
    type: int
    default: 300
    version_added: 0.1.0
  log_file:
    description:
      - File to which a line per restore event is appended, such as C(/opt/tradingbot/logs/restore.log).
    type: path
    version_added: 0.1.0
notes:
  - The PostgreSQL user needs the C(CREATEDB) privilege and must own the database, or be a superuser.
    Database-level grants and C(ALTER DATABASE ... SET) settings are copied to the restored database.
  - Safety copies are never deleted by this module. Remove them once the restored service is known good.
    O(operation=list) shows them.
seealso:
  - module: tradingbot.ops.db_backup
"""

EXAMPLES = r"""
- name: Restore the newest verified SQLite backup
  tradingbot.ops.db_restore:
    engine: sqlite
    database: /opt/tradingbot/data/tradingbot.db
    backup_dir: /opt/tradingbot/backups

- name: Restore a given PostgreSQL backup
  tradingbot.ops.db_restore:
    engine: postgresql
    database: tradingbot
    backup_dir: /opt/tradingbot/backups
    backup_file: postgres_backup_20250101_020000.sql.gz
    pg_host: 127.0.0.1
    pg_user: tradingbot
    pg_password: "{{ vault_tradingbot_db_password }}"
  register: restore

- name: Put the safety copy back after a failed health check
  tradingbot.ops.db_restore:
    engine: postgresql
    database: tradingbot
    backup_dir: /opt/tradingbot/backups
    operation: rollback
    safety_copy: "{{ restore.safety_copy }}"
    pg_host: 127.0.0.1
    pg_user: tradingbot
    pg_password: "{{ vault_tradingbot_db_password }}"

- name: List the backups on hand
  tradingbot.ops.db_restore:
    engine: sqlite
    database: /opt/tradingbot/data/tradingbot.db
    backup_dir: /opt/tradingbot/backups
    operation: list
  register: on_hand
"""

RETURN = r"""
backup:
  description: The backup chosen, with data from its manifest.
  returned: when a backup was chosen
  type: dict
  sample:
    name: sqlite_backup_20250101_020000.db.gz
    path: /opt/tradingbot/backups/sqlite_backup_20250101_020000.db.gz
    engine: sqlite
    format: sqlite
    compression: gzip
    size: 52341
    uncompressed_size: 131072
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    created: "2025-01-01T02:00:03Z"
    verified: true
    legacy: false
    status: verified
    tables: {trades: 1200}
passed_over:
  description:
    - Without O(backup_file), the newer backups that failed pre-flight and were passed over, newest first,
      each with its C(name) and the C(reason).
  returned: always
  type: list
  elements: dict
  sample:
    - name: sqlite_backup_20250102_020000.db.gz
      reason: "backup sqlite_backup_20250102_020000.db.gz is unreadable: the gzip stream does not decode"
not_predicted:
  description:
    - In check mode, what a check-mode run cannot know. Pre-flight ran, but the validation of the restored
      copy, the load and the swap happen only in a real run, so C(ok) in RV(validation) is null.
  returned: in check mode
  type: list
  elements: str
safety_copy:
  description:
    - Where the database that was live before the restore is kept. A path for SQLite, a database name for
      PostgreSQL. In check mode, where it would be kept.
    - Null when there was no database to keep, or after a rollback consumed it.
  returned: always
  type: str
  sample: /opt/tradingbot/data/tradingbot.db.pre-restore-20250101_093000
validation:
  description:
    - The checks run, each with C(ok). C(preflight) covers the checksum and the full decode.
      C(integrity), C(row_counts) and C(content_digest) cover the restored copy. C(post_swap) covers the
      live database after the swap.
    - In check mode C(ok) is null. Only C(preflight) has run, see RV(not_predicted).
  returned: always
  type: dict
  sample:
    ok: true
    checks:
      preflight: {ok: true, sha256: 9f86d0..., size: 52341, uncompressed_size: 131072}
      integrity: {ok: true, method: quick_check, detail: [ok]}
      row_counts: {ok: true, tables: 1, mismatches: {}}
      content_digest: {ok: true, skipped: the manifest records no content digest}
rolled_back:
  description: Whether a failure after the swap was undone from the safety copy, or a rollback was asked for.
  returned: always
  type: bool
live_untouched:
  description: True when the live database was not touched at all, which is the case for every refusal.
  returned: always
  type: bool
plan:
  description: What the restore does, or would do in check mode.
  returned: when a backup was chosen
  type: dict
  sample:
    restore: /opt/tradingbot/backups/sqlite_backup_20250101_020000.db.gz
    over: /opt/tradingbot/data/tradingbot.db
    live_exists: true
    safety_copy: /opt/tradingbot/data/tradingbot.db.pre-restore-20250101_093000
steps:
  description: What happened, in order.
  returned: always
  type: list
  elements: str
target:
  description: The database restored over, as a path or a C(postgresql://host:port/name) string.
  returned: always
  type: str
duration_seconds:
  description: Time taken.
  returned: always
  type: float
backups:
  description:
    - With O(operation=list), the backups on hand, newest first, with their manifest data.
    - The original system's backups are listed too, with C(legacy=true) and C(status) C(legacy, unverified).
  returned: when O(operation=list)
  type: list
  elements: dict
safety_copies:
  description: With O(operation=list), the safety copies kept from earlier restores, newest first.
  returned: when O(operation=list)
  type: list
  elements: str
"""

# Imports follow the documentation strings, as ansible-doc expects.
import copy  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import BackupError, RestoreError  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.options import RESTORE_OPTIONS  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.restore import run_restore  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=copy.deepcopy(RESTORE_OPTIONS),
        required_if=[("operation", "rollback", ["safety_copy"])],
        supports_check_mode=True,
    )
    try:
        result = run_restore(module.params, check_mode=module.check_mode)
    except RestoreError as exc:
        details = dict(exc.result)
        details.pop("msg", None)
        module.fail_json(msg=str(exc), **details)
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
