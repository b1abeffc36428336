"""Fixtures for functional tests against real databases.

``postgres_cluster`` (session scope) yields a running ``postgres.PostgresCluster``: a
throwaway PostgreSQL 15 cluster with password (scram-sha-256) auth on 127.0.0.1. Use
``postgres_cluster.params()`` for connection params in the db_backup/db_restore option
shape, ``postgres_cluster.psql(sql, database=...)`` for superuser set-up, and
``postgres_cluster.create_database(name)`` / ``drop_database(name)``. Tests that change data
should work in their own database (``create_database``), since the cluster is shared.
The cluster is stopped and its temp dir removed at the end of the session.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import postgres


@pytest.fixture(scope="session")
def postgres_cluster():
    reason = postgres.available()
    if reason:
        # CI installs PostgreSQL (tools/bootstrap.sh): there a missing server is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = postgres.PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_database(postgres_cluster, request):
    """A fresh, empty database for one test, owned by the test role; yields its params."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:50]
    postgres_cluster.drop_database(name)
    postgres_cluster.create_database(name)
    yield postgres_cluster.params(database=name)
    postgres_cluster.drop_database(name)
