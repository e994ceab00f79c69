"""Reading and writing Parquet from local paths or any pyarrow filesystem URI."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from continual_trainer.data.errors import UserError


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Split a path or URI (`s3://bucket/key`, `file:///x`, `./x`) into filesystem and path."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise UserError(f"{redact(uri)}: cannot open ({scrub(str(exc), uri)})") from None


def same_file(a: str, b: str) -> bool:
    """Whether two paths or URIs name the same file (through symlinks and hard links, on local disks)."""
    (fs_a, path_a), (fs_b, path_b) = resolve(a), resolve(b)
    if isinstance(fs_a, pafs.LocalFileSystem) and isinstance(fs_b, pafs.LocalFileSystem):
        try:
            return os.path.samefile(path_a, path_b)
        except OSError:  # one does not exist yet
            return os.path.realpath(path_a) == os.path.realpath(path_b)
    return type(fs_a) is type(fs_b) and path_a.rstrip("/") == path_b.rstrip("/")


def redact(uri: str) -> str:
    """A URI fit to print: any user:secret@ credentials and query string removed."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    host, sep, path = rest.partition("/")
    host = host.rsplit("@", 1)[-1]
    return f"{scheme}://{host}{sep}{path.split('?', 1)[0]}"


def scrub(text: str, uri: str) -> str:
    """`text` (e.g. a library's error message) with the URI's credentials and query removed."""
    if "://" not in uri:
        return text
    rest = uri.split("://", 1)[1]
    secrets = [uri, rest.split("/", 1)[0], *rest.split("/", 1)[0].rsplit("@", 1)[0].split(":"), rest.partition("?")[2]]
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def read_bytes(uri: str) -> bytes:
    """The whole file at `uri`, or UserError naming it."""
    fs, path = resolve(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"{redact(uri)}: no such file")
        if info.type == pafs.FileType.Directory:
            raise UserError(f"{redact(uri)}: is a directory, expected a Parquet file")
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as exc:
        raise UserError(f"{redact(uri)}: cannot read ({scrub(str(exc), uri)})") from None


def table_from_bytes(data: bytes, source: str) -> pa.Table:
    """Parse Parquet bytes, turning every way a file can be broken into one UserError."""
    if not data:
        raise UserError(f"{source}: the file is empty, not Parquet")
    if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise UserError(f"{source}: not a Parquet file (or truncated)")
    try:
        return pq.ParquetFile(pa.BufferReader(arrow_owned(data))).read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserError(f"{source}: unreadable Parquet ({one_line(str(exc))})") from None


def one_line(text: str, limit: int = 300) -> str:
    """A library's message fit for one line: its first non-empty line, shortened."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= limit else first[: limit - 1] + "…"


def arrow_owned(data: bytes) -> pa.Buffer:
    """A copy of `data` in memory Arrow owns.

    Arrow may release a reader's last reference on one of its own pool threads after
    the read returned. If that reference is to a Python object (a `BytesIO`, or a
    buffer over Python `bytes`), releasing it needs the GIL, and during interpreter
    shutdown that aborts the process ("terminate called without an active
    exception", exit 134). Memory Arrow owns is released without Python.
    """
    sink = pa.BufferOutputStream()
    sink.write(data)
    return sink.getvalue()


def table_to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


TMP_PREFIX = ".tmp-"
HOST = socket.gethostname().replace("-", "_")[:40] or "host"


def temp_name() -> str:
    """A temporary file name naming this host and process, so that cleanup can tell a dead
    writer's leftovers from a live one's (see `Store`)."""
    return f"{TMP_PREFIX}{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def parse_temp_name(name: str) -> tuple[str, int] | None:
    """(host, pid) of a name made by `temp_name`, or None if it is not one."""
    if not name.startswith(TMP_PREFIX):
        return None
    parts = name[len(TMP_PREFIX) :].split("-")
    if len(parts) >= 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    if len(parts) == 2 and parts[0].isdigit():  # `.tmp-<pid>-<random>`, written before hosts were named
        return HOST, int(parts[0])
    return None


def write_temp(directory: str, data: bytes) -> str:
    """Write `data` durably to a new temporary file in `directory` (a local path); return its path.

    If the write fails (disk full, file-size limit), the partial file is removed and the
    OSError raised.
    """
    tmp = os.path.join(directory, temp_name())
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_table(uri: str, table: pa.Table) -> None:
    """Write `table` as Parquet at `uri` atomically (temporary name and rename, or one PUT)."""
    data = table_to_bytes(table)
    fs, path = resolve(uri)
    tmp = None
    try:
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            raise UserError(f"{redact(uri)}: is a directory; give a file name")
        if isinstance(fs, pafs.LocalFileSystem):
            directory = os.path.dirname(path) or "."
            os.makedirs(directory, exist_ok=True)
            tmp = write_temp(directory, data)
            os.replace(tmp, path)
            tmp = None
        else:
            with fs.open_output_stream(path) as f:
                f.write(data)
    except OSError as exc:
        raise UserError(f"{redact(uri)}: cannot write ({one_line(scrub(str(exc), uri))})") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
