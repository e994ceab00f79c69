"""Conditional writes on S3 (create-if-absent, replace-if-unchanged), which pyarrow does not offer.

A store on `s3://` needs them for its locks and for `CURRENT`'s compare-and-swap to be
race-free: `If-None-Match: *` creates an object only if no object has its key, and
`If-Match: <etag>` replaces one only if nobody changed it since it was read. The S3
client is built from the same URI pyarrow reads (`endpoint_override`, `scheme`,
`region`, credentials in the URI or the environment).
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import one_line, redact


class S3Conditional:
    """Conditional PUTs under one S3 bucket and key prefix."""

    def __init__(self, client: Any, bucket: str, prefix: str, display: str) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._display = display

    @classmethod
    def for_uri(cls, uri: str) -> S3Conditional | None:
        """The conditional writer for an `s3://` URI, or None for any other kind of URI."""
        parts = urlsplit(uri)
        if parts.scheme != "s3":
            return None
        import boto3
        from botocore.config import Config

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        endpoint = query.get("endpoint_override")
        scheme = query.get("scheme", "https")
        user = unquote(parts.username) if parts.username else query.get("access_key")
        secret = unquote(parts.password) if parts.password else query.get("secret_key")
        client = boto3.client(
            "s3",
            endpoint_url=f"{scheme}://{endpoint}" if endpoint else None,
            region_name=query.get("region") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            aws_access_key_id=user,
            aws_secret_access_key=secret,
            aws_session_token=query.get("session_token"),
            config=Config(
                retries={"max_attempts": 3},
                connect_timeout=float(query.get("connect_timeout", 10)),
                read_timeout=float(query.get("request_timeout", 30)),
                s3={"addressing_style": "path" if endpoint else "auto"},
            ),
        )
        bucket = parts.netloc.rsplit("@", 1)[-1]
        return cls(client, bucket, parts.path, redact(uri))

    def put_if_absent(self, rel: str, data: bytes) -> bool:
        """Create `rel` with `data` unless an object has that key; True if this call created it."""
        return self._put(rel, data, IfNoneMatch="*")

    def put_if_unchanged(self, rel: str, data: bytes, etag: str) -> bool:
        """Replace `rel` with `data` only if its ETag is still `etag`; True if replaced."""
        return self._put(rel, data, IfMatch=etag)

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """`rel`'s bytes and ETag, or None if there is no such object."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self._client.get_object(Bucket=self._bucket, Key=self._key(rel))
            return reply["Body"].read(), reply["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._error(rel, exc) from None
        except BotoCoreError as exc:
            raise self._error(rel, exc) from None

    def _put(self, rel: str, data: bytes, **condition: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(5):
            try:
                self._client.put_object(Bucket=self._bucket, Key=self._key(rel), Body=data, **condition)
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    return False
                if code in ("ConditionalRequestConflict", "409") and attempt < 4:
                    time.sleep(0.05 * (attempt + 1))  # a concurrent conditional write: S3 asks to retry
                    continue
                raise self._error(rel, exc) from None
            except BotoCoreError as exc:
                raise self._error(rel, exc) from None
        return False

    def _key(self, rel: str) -> str:
        return f"{self._prefix}/{rel}" if self._prefix else rel

    def _error(self, rel: str, exc: Exception) -> UserError:
        return UserError(f"{self._display}: cannot write {rel} ({one_line(str(exc))})")
