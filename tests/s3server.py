"""A real S3-compatible server for the tests: moto's server mode on a free 127.0.0.1 port, over plain http.

The server enforces credentials (``INITIAL_NO_AUTH_ACTION_COUNT``): the first requests create an IAM
user with an S3 policy, whose key is then the only one accepted, so wrong credentials are refused
as they would be by a real store.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

# IAM calls the fixture makes before the server starts checking credentials.
_SETUP_CALLS = 4
BUCKET = "melvoc-data"


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint and the environment that reaches it with valid credentials."""

    endpoint: str
    access_key: str
    secret_key: str

    def env(self, **changes: str) -> dict[str, str]:
        """The standard AWS variables for this server (``changes`` override them)."""
        values = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        values.update(changes)
        return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start() -> tuple[subprocess.Popen, S3Server]:
    """Start the server, create the credentials and :data:`BUCKET`; the caller terminates the process."""
    import boto3

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_CALLS)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start on port {port}")
            time.sleep(0.1)
    anonymous = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup")
    iam = boto3.client("iam", **anonymous)
    iam.create_user(UserName="melvoc")
    key = iam.create_access_key(UserName="melvoc")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    arn = iam.create_policy(PolicyName="melvoc-s3", PolicyDocument=json.dumps(policy))["Policy"]["Arn"]
    iam.attach_user_policy(UserName="melvoc", PolicyArn=arn)
    server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=server.access_key,
                 aws_secret_access_key=server.secret_key).create_bucket(Bucket=BUCKET)
    return proc, server
