#!/usr/bin/python
# Copyright: tradingbot.ops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: pg_pitr
short_description: Restore a PostgreSQL cluster to a point in time from its pgBackRest repository
version_added: 0.2.0
description:
  - Reads C(pgbackrest info --output=json), the newest timeline's history file and the newest archived commit
    (C(pg_waldump) of the last archived segments), and plans the restore of O(target_time).
  - "The plan names the base backup and the WAL range it uses. Only backups of the current history are used:
    a backup on an older timeline counts only when that timeline branched off after the backup ended, so a
    later restore after an earlier one (which started a new timeline) still works. The restore follows the
    newest timeline (C(--target-timeline))."
  - A target before the oldest usable backup's end or after the newest archived commit is refused before
    anything is touched, with an error that names the reachable range.
  - "Otherwise: the server is stopped, the data directory is moved aside as the safety copy
    (C(<data_dir>.pre-pitr-<UTC stamp>)), C(pgbackrest restore --delta) writes a fresh one
    (C(--type=time --target-action=promote), or C(--type=default) for V(latest)), the server starts and the
    module waits until C(pg_is_in_recovery()) is false, then validates: it connects and counts every table's
    rows. Any failure after the move stops the server, puts the safety copy back and starts it again."
  - The promoted cluster is on a new timeline. Commands run as O(os_user); no secret is passed in argv, the
    S3 keys and the cipher passphrase stay in pgBackRest's configuration (role C(tradingbot.ops.tradingbot_pgbackrest)).
  - Stop the application that writes to the database first.
author:
  - tradingbot.ops maintainers (@tradingbot)
attributes:
  check_mode:
    support: full
    description:
      - Plans and refuses exactly as a real run, and changes nothing; RV(plan) names the backup and the WAL range.
      - A real run first asks the running server to archive its current WAL (C(pgbackrest check)); check mode
        does not (unless O(archive_current)), so its range may end a little earlier.
  diff_mode:
    support: none
    description: Returns no diff; RV(plan) says what would be restored.
options:
  operation:
    description:
      - V(restore) restores O(target_time).
      - "V(rollback) undoes an earlier restore that succeeded but whose service failed afterwards (the role
        C(tradingbot.ops.tradingbot_restore) does this when the application's health check fails): it stops the
        server, moves the restored data directory aside as C(<data_dir>.failed-pitr-<stamp>), puts
        O(safety_copy) back as O(data_dir), starts the server and waits until it accepts queries."
    type: str
    choices: [restore, rollback]
    default: restore
    version_added: 0.2.0
  stanza:
    description: The pgBackRest stanza of the cluster.
    type: str
    required: true
    version_added: 0.2.0
  target_time:
    description:
      - V(latest) (everything archived) or an ISO 8601 time with a zone, such as V(2026-12-01 10:15:00+00).
        Commits up to and including that time are kept.
      - Required with O(operation=restore).
    type: str
    version_added: 0.2.0
  safety_copy:
    description:
      - With O(operation=rollback), the safety copy that the restore returned (RV(safety_copy)); it must be
        C(<data_dir>.pre-pitr-<stamp>) beside O(data_dir).
    type: path
    version_added: 0.2.0
  data_dir:
    description: The cluster's data directory (pgBackRest's C(pg1-path)).
    type: path
    required: true
    version_added: 0.2.0
  database:
    description: The database that the validation connects to and counts the tables of.
    type: str
    default: postgres
    version_added: 0.2.0
  validate_tables:
    description: Tables that must exist in O(database) after the restore; a missing one fails it and rolls back.
    type: list
    elements: str
    default: []
    version_added: 0.2.0
  pg_bin_dir:
    description: Where C(psql), C(pg_ctl) and C(pg_waldump) are.
    type: path
    default: /usr/lib/postgresql/15/bin
    version_added: 0.2.0
  pg_port:
    description: The server's port.
    type: int
    default: 5432
    version_added: 0.2.0
  pg_socket_dir:
    description: The server's unix socket directory; the module connects there as O(os_user).
    type: path
    default: /var/run/postgresql
    version_added: 0.2.0
  service:
    description:
      - The systemd unit that runs the server, for example V(postgresql@15-main). Without it the server is
        stopped and started with C(pg_ctl -D) O(data_dir).
    type: str
    version_added: 0.2.0
  os_user:
    description: The OS user that owns the cluster and runs pgBackRest.
    type: str
    default: postgres
    version_added: 0.2.0
  config_path:
    description: pgBackRest's C(--config-path) (its C(pgbackrest.conf) and C(conf.d/)).
    type: path
    default: /etc/pgbackrest
    version_added: 0.2.0
  pgbackrest:
    description: The pgbackrest binary.
    type: path
    default: pgbackrest
    version_added: 0.2.0
  archive_mode:
    description:
      - V(preserve) keeps archiving on after the restore, so the new timeline is archived (and a later restore
        can reach it). V(off) is for drills on a copy, which must not write into the repository.
    type: str
    choices: [preserve, "off"]
    default: preserve
    version_added: 0.2.0
  archive_current:
    description:
      - In check mode too, first ask the running server to archive its current WAL (C(pgbackrest check), a WAL
        switch, which changes no data), so that the plan reaches the newest commit as a real run's does. The role
        C(tradingbot.ops.tradingbot_restore) sets it for the plan it confirms before a real run.
    type: bool
    default: false
    version_added: 0.2.0
  recovery_timeout:
    description: Seconds to wait for the restored server to finish recovery and promote.
    type: int
    default: 600
    version_added: 0.2.0
"""

EXAMPLES = r"""
- name: Show what a restore to 10:15 would use
  tradingbot.ops.pg_pitr:
    stanza: tradingbot
    target_time: "2026-12-01 10:15:00+00"
    data_dir: /var/lib/postgresql/15/main
    service: postgresql@15-main
    database: tradingbot
  check_mode: true

- name: Restore to 10:15 and check that the trades table came back
  tradingbot.ops.pg_pitr:
    stanza: tradingbot
    target_time: "2026-12-01 10:15:00+00"
    data_dir: /var/lib/postgresql/15/main
    service: postgresql@15-main
    database: tradingbot
    validate_tables: [trades]

- name: Restore everything archived
  tradingbot.ops.pg_pitr:
    stanza: tradingbot
    target_time: latest
    data_dir: /var/lib/postgresql/15/main
    service: postgresql@15-main

- name: Put the database from before the restore back (the application failed on the restored one)
  tradingbot.ops.pg_pitr:
    operation: rollback
    stanza: tradingbot
    safety_copy: /var/lib/postgresql/15/main.pre-pitr-20261201T101700Z
    data_dir: /var/lib/postgresql/15/main
    service: postgresql@15-main
"""

RETURN = r"""
plan:
  description: What the restore uses.
  returned: with O(operation=restore)
  type: dict
  contains:
    target_time:
      description: V(latest) or the target in UTC.
      type: str
    backup:
      description: The base backup's label.
      type: str
      sample: 20261201-020000F
    backup_type:
      description: V(full), V(diff) or V(incr).
      type: str
    backup_stop_time:
      description: When the base backup ended (UTC).
      type: str
    wal_start:
      description: The first WAL segment replayed (the backup's first).
      type: str
    wal_end:
      description: The newest archived WAL segment; replay stops at the target, at the latest here.
      type: str
    target_timeline:
      description: The timeline followed (the newest in the archive).
      type: int
    reachable:
      description:
        - The reachable range, C(start) (the oldest usable backup's end) and C(end) (the newest archived commit).
      type: dict
  sample:
    target_time: "2026-12-01 10:15:00.000000+00"
    backup: 20261201-020000F
    backup_type: full
    backup_stop_time: "2026-12-01 02:00:31.000000+00"
    wal_start: "000000010000000000000002"
    wal_end: "00000001000000000000000A"
    target_timeline: 1
    reachable: {start: "2026-12-01 02:00:31.000000+00", end: "2026-12-01 11:02:12.481516+00"}
restore_arguments:
  description: The arguments given to C(pgbackrest restore) (after the config path and stanza); no secret is among them.
  returned: with O(operation=restore)
  type: list
  elements: str
safety_copy:
  description:
    - The old data directory, moved aside (kept; remove it once the restore is accepted).
    - With O(operation=rollback), the copy that was put back.
  returned: when a restore ran, and with O(operation=rollback)
  type: str
failed_restore:
  description: With O(operation=rollback), where the restored data directory was moved (kept for inspection).
  returned: with O(operation=rollback)
  type: str
row_counts:
  description: Rows per table of O(database) after the restore.
  returned: success, not in check mode
  type: dict
timeline:
  description: The restored cluster's timeline.
  returned: success, not in check mode
  type: int
rolled_back:
  description: True when a failed restore was undone from the safety copy (or O(operation=rollback) put it back).
  returned: failure after the data directory was moved, and O(operation=rollback) outside check mode
  type: bool
not_predicted:
  description: What only a real run does and checks.
  returned: check mode
  type: list
  elements: str
"""

import copy  # noqa: E402 - after the documentation, as ansible-test expects

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import RestoreError  # noqa: E402
from ansible_collections.tradingbot.ops.plugins.module_utils.pgbackrest_pitr import (  # noqa: E402
    PITR_OPTIONS,
    PITR_REQUIRED_IF,
    run_pitr,
    run_rollback,
)


def main():
    module = AnsibleModule(
        argument_spec=copy.deepcopy(PITR_OPTIONS), required_if=PITR_REQUIRED_IF, supports_check_mode=True
    )
    run = run_rollback if module.params["operation"] == "rollback" else run_pitr
    try:
        result = run(module.params, check_mode=module.check_mode)
    except RestoreError as exc:
        details = dict(exc.result)
        details.pop("msg", None)
        module.fail_json(msg=str(exc), **details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
