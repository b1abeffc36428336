"""The interface every database adapter implements; ``registry.adapter`` hands them out.

Backup and restore orchestration (``backup.py``, ``restore.py``) only call these methods, so a
new engine is one new module plus one line in the registry.
"""


class EngineAdapter:
    """One database engine. Subclasses set ``name`` and implement every method."""

    name = "abstract"
    # Whether the recovery drill also backs up the live database and restores it into scratch.
    drill_restores_live = False

    # --- backup ---------------------------------------------------------------------------

    def check_backup(self, opts, fmt):
        """Refuse options this engine cannot back up with; return the source's identity
        (a path, a database name), before anything is touched."""
        raise NotImplementedError

    def source(self, opts, database):
        """The manifest's ``source``: where the backup came from (no secrets)."""
        raise NotImplementedError

    def backup(self, plan, tmp_path, snapshot_path, log):
        """Write the backup to ``tmp_path`` (compressed per ``plan``); return the manifest's
        pieces: ``stream``, ``tables``, ``content_digest``, ``source_extra``, ``tool_versions``,
        ``checks``."""
        raise NotImplementedError

    def verify_written(self, plan, path, stream):
        """Decode the written backup completely and compare it with ``stream``; return the
        manifest's ``verification``."""
        raise NotImplementedError

    # --- restore --------------------------------------------------------------------------

    def format_problems(self, stats, manifest):
        """What is wrong with a decoded stream's head and tail for this engine's format."""
        raise NotImplementedError

    def preflight(self, path, manifest, sink=None):
        """SHA-256, size and a full decode against the manifest (``verification.preflight``)."""
        raise NotImplementedError

    def target(self, opts):
        """The database a restore goes over, as a path or a ``postgresql://`` string."""
        raise NotImplementedError

    def plan_restore(self, opts, stamp):
        """The restore's plan (``over``, ``live_exists``, ``safety_copy``, ...) before any change;
        ``stamp`` names the safety copy."""
        raise NotImplementedError

    def prepare(self, opts, run, path, manifest, *, plan, log):
        """Restore ``path`` into a candidate beside the live database and validate it there.

        Raises ``PreflightError`` (after removing the candidate) when the backup itself is bad,
        so the caller may fall back to an older one; fails the run for anything else.
        """
        raise NotImplementedError

    def swap_in(self, opts, run, prepared, plan, log):
        """Keep the live database as the safety copy and put the candidate in its place;
        roll back on any failure."""
        raise NotImplementedError

    def rollback(self, opts, safety_copy, check_mode):
        """Check ``safety_copy`` and, unless in check mode, put it back as the live database."""
        raise NotImplementedError

    def safety_copies(self, opts):
        """The safety copies kept from earlier restores, newest first."""
        raise NotImplementedError
