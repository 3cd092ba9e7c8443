"""Where packed shards live: a local folder or an S3-compatible prefix (``s3://bucket/prefix``).

S3 goes through boto3, which reads the standard environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles), so a local
S3-compatible server over plain http works as well as AWS. Every failure to reach the store (no
connection, no bucket, rejected credentials) is one :class:`StorageError` that names the URI, the
cause and the fix, raised from a few bounded calls instead of a streaming engine's endless retries.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["StorageError", "Store", "is_remote"]

# A start-up check must fail in seconds, not after a long backoff.
_CONNECT_TIMEOUT_S = 10
_ATTEMPTS = 3


class StorageError(OSError):
    """The store behind a shard URI cannot be used; the message names the URI, the cause and the fix."""


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is an object-store URI (``s3://...``) rather than a local folder."""
    return urlparse(str(uri)).scheme == "s3"


class Store:
    """A local folder or an S3 prefix, with the few operations packing and training need.

    Args:
        uri: ``/path/to/folder`` or ``s3://bucket/prefix``.
    """

    def __init__(self, uri: str | os.PathLike) -> None:
        self.uri = str(uri).rstrip("/")
        parsed = urlparse(self.uri)
        if parsed.scheme not in ("", "file", "s3"):
            raise StorageError(
                f"{uri}: unsupported storage scheme {parsed.scheme!r}; use a local folder or s3://bucket/prefix"
            )
        self.remote = parsed.scheme == "s3"
        if self.remote:
            if not parsed.netloc:
                raise StorageError(f"{uri}: no bucket in the URI; write s3://bucket/prefix")
            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
            self._client: Any = None
        else:
            self.path = Path(parsed.path if parsed.scheme == "file" else self.uri).expanduser()

    # ------------------------------------------------------------------ S3
    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use, from the standard environment)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=_CONNECT_TIMEOUT_S, retries={"max_attempts": _ATTEMPTS, "mode": "standard"})
            # A session of its own: it reads the environment now (boto3's default session keeps what it read first).
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def _explain(self, exc: BaseException, doing: str) -> StorageError:
        """One clear error for whatever boto3 raised while ``doing`` something with this store."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS S3"
        if isinstance(exc, EndpointConnectionError) or type(exc).__name__ in ("ConnectTimeoutError", "ReadTimeoutError"):
            return StorageError(
                f"{self.uri}: cannot reach the object store at {endpoint} while {doing} ({exc}); check "
                "AWS_ENDPOINT_URL and that the server is up and reachable from this machine"
            )
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"{self.uri}: no credentials for the object store while {doing}; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and doing.startswith("opening the bucket")):
                return StorageError(
                    f"{self.uri}: bucket {self.bucket!r} does not exist at {endpoint}; create it or fix the URI"
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
                        "InvalidToken", "ExpiredToken") or status == 403:
                return StorageError(
                    f"{self.uri}: the object store at {endpoint} rejected the credentials while {doing} "
                    f"({code or status}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
                    "and the bucket's permissions"
                )
            return StorageError(f"{self.uri}: the object store at {endpoint} answered {code or status} while {doing}: {exc}")
        return StorageError(f"{self.uri}: {type(exc).__name__} while {doing}: {exc}")

    def check_access(self) -> None:
        """Reach the store now: for S3 the endpoint, the bucket and the credentials (one request).

        Raises:
            StorageError: unreachable endpoint, missing bucket or rejected credentials.
        """
        if not self.remote:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._explain(exc, "opening the bucket") from exc

    # ------------------------------------------------------------------ both
    def exists(self, name: str) -> bool:
        """Whether the object/file ``name`` exists under this URI."""
        if not self.remote:
            return (self.path / name).is_file()
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._explain(exc, f"looking for {name}") from exc
        except Exception as exc:
            raise self._explain(exc, f"looking for {name}") from exc

    def is_empty(self) -> bool:
        """Whether nothing is stored under this URI (a missing folder counts as empty)."""
        if not self.remote:
            return not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir()))
        try:
            listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
        except Exception as exc:
            raise self._explain(exc, "listing it") from exc
        return not listing.get("KeyCount", 0)

    def read_json(self, name: str) -> dict[str, Any]:
        """The JSON object ``name`` under this URI."""
        if not self.remote:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except Exception as exc:
            raise self._explain(exc, f"reading {name}") from exc
        return json.loads(body.decode("utf-8"))

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        """Store ``value`` as the JSON object ``name`` (local: written to a temporary name, then renamed)."""
        data = json.dumps(value, indent=1).encode("utf-8")
        if not self.remote:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = self.path / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(self.path / name)
            return
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        except Exception as exc:
            raise self._explain(exc, f"writing {name}") from exc

    def upload(self, local: Path, name: str) -> None:
        """Copy the local file ``local`` to ``name`` under this URI."""
        if not self.remote:
            self.path.mkdir(parents=True, exist_ok=True)
            if local.resolve() != (self.path / name).resolve():
                shutil.copyfile(local, self.path / name)
            return
        try:
            self.client.upload_file(str(local), self.bucket, self._key(name))
        except Exception as exc:
            raise self._explain(exc, f"uploading {name}") from exc

    def remove_all(self) -> None:
        """Delete everything under this URI (``--overwrite``, or a failed pack)."""
        if not self.remote:
            if self.path.is_dir():
                for child in self.path.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            return
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key("")):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        except Exception as exc:
            raise self._explain(exc, "deleting its contents") from exc
