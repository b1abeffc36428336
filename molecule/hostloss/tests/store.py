"""The scenario's view of the store, from the controller: keys, clients and the bucket.

The store runs in its own test host (prepare.yml); the controller reaches it at the container's
address on the scenario's podman network. ``python3 store.py create-bucket`` creates the bucket
with Object Lock, with the admin's keys, once; ``python3 store.py replica-end PREFIX`` prints the
upload time of the newest object under PREFIX (a lost host's Litestream replica: the last state
it replicated).
"""

import json
import os
import subprocess
import sys

import boto3
import botocore.config
import botocore.exceptions

SCENARIO = "hostloss"
STORE = f"tradingbot-store-{SCENARIO}"
NETWORK = f"tradingbot-{SCENARIO}"
BUCKET = "tradingbot-offsite"
PORT = 8333
# Access key ids, as in group_vars/all.yml; the secrets are made in prepare.yml.
HOST_KEY = "HOSTLOSSHOSTKEY00001"
ADMIN_KEY = "HOSTLOSSADMINKEY0001"


def keys_dir():
    return os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "keys")


def read_key(name):
    """A file from the keys directory; the password lookup's files hold the secret alone."""
    with open(os.path.join(keys_dir(), name), encoding="ascii") as handle:
        return handle.read().strip()


def identity(name="identity.txt"):
    """The age identity line (AGE-SECRET-KEY-1...) of an identity file."""
    return next(line for line in read_key(name).splitlines() if line.startswith("AGE-SECRET-KEY-"))


def endpoint():
    address = subprocess.run(
        ["podman", "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}', STORE],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"http://{address}:{PORT}"


def client(who="admin"):
    access_key, secret = (ADMIN_KEY, read_key("s3-admin-secret")) if who == "admin" else (HOST_KEY, host_secret())
    return boto3.client(
        "s3",
        endpoint_url=endpoint(),
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def host_secret():
    return read_key("s3-host-secret")


def objects(prefix):
    """Every version of every key under prefix, and the delete markers: (versions, markers)."""
    versions, markers = [], []
    # Paged: Litestream's objects share the host's prefix, more than one page of them.
    for page in client().get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix):
        versions += page.get("Versions", [])
        markers += page.get("DeleteMarkers", [])
    return versions, markers


def create_bucket():
    admin = client()
    try:
        admin.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    except botocore.exceptions.ClientError as error:
        if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        print(json.dumps({"bucket": BUCKET, "state": "present"}))
        return
    print(json.dumps({"bucket": BUCKET, "state": "created"}))


def replica_end(prefix):
    """The newest LastModified under prefix, as Litestream 0.3.13 times its objects (whole seconds)."""
    newest = None
    for page in client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            newest = item["LastModified"] if newest is None else max(newest, item["LastModified"])
    if newest is None:
        sys.exit(f"no object under s3://{BUCKET}/{prefix}")
    print(newest.isoformat())


if __name__ == "__main__":
    if sys.argv[1:] == ["create-bucket"]:
        create_bucket()
    elif len(sys.argv) == 3 and sys.argv[1] == "replica-end":
        replica_end(sys.argv[2])
    else:
        sys.exit("usage: store.py create-bucket | replica-end PREFIX")
