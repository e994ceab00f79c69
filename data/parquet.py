"""Reading and writing Parquet from local paths or any pyarrow filesystem URI; reading CSV and
JSON Lines wherever Parquet is read.

A file's format is told by its name: `.csv` (and `.tsv`) through `pyarrow.csv`, `.jsonl`,
`.ndjson` and `.json` (one object per line) through `pyarrow.json`, anything else as Parquet.
Text formats carry no types, so a reader that knows the store's schema passes the Arrow type of
each column it knows (`types`): codes such as `007` stay text in a categorical column, a numeric
column with a stray word is refused naming it, instead of both being guessed from the values.
"""

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
            raise UserError(f"{redact(uri)}: is a directory, expected a data file")
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as exc:
        raise UserError(f"{redact(uri)}: cannot read ({scrub(str(exc), uri)})") from None


TEXT_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}
FORMATS = (".parquet", *TEXT_FORMATS)  # what an inbox picks up


def text_format(source: str) -> str | None:
    """`csv` or `json` for a file named as one (its query string aside), else None (Parquet)."""
    name = source.split("?", 1)[0].lower()
    return next((kind for ext, kind in TEXT_FORMATS.items() if name.endswith(ext)), None)


def table_from_bytes(data: bytes, source: str, types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Parse a file's bytes (Parquet, or CSV / JSON Lines by `source`'s name), turning every way
    a file can be broken into one UserError. `types`: Arrow types of the columns a text file's
    reader should not guess."""
    kind = text_format(source)
    if kind is not None:
        return _text_table(data, source, kind, types or {})
    if not data:
        raise UserError(f"{source}: the file is empty, not Parquet")
    if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise UserError(f"{source}: not a Parquet file (or truncated)")
    try:
        return pq.ParquetFile(pa.BufferReader(arrow_owned(data))).read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserError(f"{source}: unreadable Parquet ({one_line(str(exc))})") from None


def _text_table(data: bytes, source: str, kind: str, types: dict[str, pa.DataType]) -> pa.Table:
    """A CSV or JSON Lines file as a table, columns of `types` read as those types."""
    if not data.strip():
        raise UserError(f"{source}: the file is empty")
    try:
        if kind == "csv":
            import pyarrow.csv as pacsv

            tab = source.split("?", 1)[0].lower().endswith(".tsv")
            parse = pacsv.ParseOptions(delimiter="\t" if tab else ",")

            def read(column_types: dict[str, pa.DataType]) -> pa.Table:
                options = pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=False)
                return pacsv.read_csv(pa.BufferReader(data), parse_options=parse, convert_options=options)

            table = read(types)
            guessed = [n for n in table.column_names if n not in types and _is_numeric(table.column(n).type)]
            if guessed:  # numbers guessed from text: codes such as 007 stay text (a number would drop the 0)
                raw = read({n: pa.string() for n in guessed})
                coded = [n for n in guessed if _has_code(raw.column(n))]
                if coded:
                    table = read({**types, **{n: pa.string() for n in coded}})
            return table
        import pyarrow.json as pajson

        table = pajson.read_json(pa.BufferReader(data))
        cast = [types.get(name) for name in table.column_names]
        if any(t is not None and t != table.column(i).type for i, t in enumerate(cast)):
            table = table.cast(
                pa.schema(
                    [pa.field(n, t or table.column(n).type) for n, t in zip(table.column_names, cast, strict=True)]
                )
            )
        return table
    except (pa.ArrowException, ValueError) as exc:
        name = "CSV" if kind == "csv" else "JSON Lines"
        raise UserError(f"{source}: unreadable {name} ({one_line(str(exc))})") from None


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _has_code(col: pa.ChunkedArray) -> bool:
    """Whether text that reads as numbers holds a code a number would change (a leading zero)."""
    import pyarrow.compute as pc

    return bool(pc.any(pc.match_substring_regex(col, r"^\s*[+-]?0\d")).as_py())


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
