"""Reading a user's table: one CSV or Parquet file, or a directory of Parquet shards, on
local disk or on `s3://` / `gs://` (through pyarrow's filesystems).

Only the columns a task names are read, and every check that needs the table itself
happens here, so bad input fails with a `DataError` that names the file and the column
instead of a traceback from deep inside a worker:

    table = read_table("data/pm.csv", time_column="time", value_columns=["pm", "temp"])
    table["time"]      # timestamp[ns], or int64 for a plain step index
    table["pm"]        # float64; a missing value is null
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.errors import DataError

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst")


def read_table(path: str, *, time_column: str, value_columns: list[str],
               id_column: str = "") -> pa.Table:
    """The named columns of the table at `path`: time parsed, values as float64, the id
    column (when given) as text. Nothing else is read."""
    columns = [time_column, *([id_column] if id_column else []), *value_columns]
    if len(set(columns)) != len(columns):
        raise DataError(f"{path}: a column is named twice among the time column, series id "
                        f"and value columns ({', '.join(columns)}); expected distinct columns.")
    return coerce_columns(read_columns(path, columns), path, time_column=time_column,
                          value_columns=value_columns, id_column=id_column)


def coerce_columns(raw: pa.Table, path: str, *, time_column: str, value_columns: list[str],
                   id_column: str = "") -> pa.Table:
    """The columns of `raw` (read from `path`, named in errors) in the types the
    forecasting side works in; see `read_table`."""
    columns = [time_column, *([id_column] if id_column else []), *value_columns]
    _check_columns(path, raw.schema, columns)
    result = {time_column: parse_time(raw[time_column], path, time_column)}
    if id_column:
        result[id_column] = pc.cast(raw[id_column], pa.string())
    for name in value_columns:
        result[name] = _numeric(raw[name], path, name)
    return pa.table(result)


def parse_time(column: pa.ChunkedArray, path: str, name: str) -> pa.ChunkedArray:
    """Timestamps as timestamp[ns] (text is parsed as ISO 8601), or integers as a step
    index. Anything else, or a value that does not parse, is refused naming it."""
    kind = column.type
    if pa.types.is_integer(kind):
        return pc.cast(column, pa.int64())
    if pa.types.is_date(kind):
        return pc.cast(column, pa.timestamp("ns"))
    if pa.types.is_timestamp(kind):  # a time zone is dropped: the instants stay, in UTC
        nanos = pc.cast(pc.cast(column, pa.timestamp("ns", tz=kind.tz)), pa.int64())
        return pc.cast(nanos, pa.timestamp("ns"))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return pc.cast(column, pa.timestamp("ns"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = _first_unparseable(column)
            raise DataError(f"{path}: column `{name}` (task.time_column) holds {bad!r}, which "
                            "is not a timestamp; expected ISO 8601 times such as "
                            "'2024-01-31 13:00:00' (or integers for a plain step index)."
                            ) from None
    raise DataError(f"{path}: column `{name}` (task.time_column) has type {kind}; expected "
                    "timestamps, ISO 8601 text or integers.")


def _first_unparseable(column: pa.ChunkedArray) -> str:
    for value in column.to_pylist():
        try:
            pc.cast(pa.array([value]), pa.timestamp("ns"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return value
    return ""


def _numeric(column: pa.ChunkedArray, path: str, name: str) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        return pc.cast(column, pa.float64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:  # "NA" and "" are nulls already; numbers written as text are accepted
            return pc.cast(column, pa.float64())
        except pa.ArrowInvalid:
            bad = next(v for v in column.to_pylist() if not _is_number(v))
            raise DataError(f"{path}: column `{name}` holds {bad!r}; expected numbers "
                            "(an empty cell is a missing value).") from None
    raise DataError(f"{path}: column `{name}` has type {kind}; expected numbers.")


def _is_number(text: str | None) -> bool:
    """Whether Arrow reads `text` as a number (Python's float() is laxer: " 1", "1_0")."""
    try:
        pc.cast(pa.array([text], pa.string()), pa.float64())
    except pa.ArrowInvalid:
        return False
    return True


def read_columns(path: str, columns: list[str]) -> pa.Table:
    """`columns` of a CSV or Parquet file or a directory of Parquet files (local or a
    URI); a missing file or column is a DataError naming it."""
    filesystem, where = filesystem_of(path)
    info = filesystem.get_file_info(where)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{path} does not exist; expected a CSV or Parquet file, or a "
                        "directory of Parquet files.")
    if info.type == pafs.FileType.Directory:
        dataset = pds.dataset(where, format="parquet", filesystem=filesystem)
        if not dataset.files:
            raise DataError(f"{path} is a directory without Parquet files; expected "
                            "*.parquet shards of one table.")
        schema, source = dataset.schema, dataset.files[0]
    elif where.endswith(CSV_SUFFIXES):
        with filesystem.open_input_stream(where, compression="detect") as stream:
            try:
                table = pcsv.read_csv(stream, convert_options=pcsv.ConvertOptions(
                    strings_can_be_null=True))
            except pa.ArrowInvalid as error:
                raise DataError(f"{path} could not be read as CSV: {error}") from None
        _check_columns(path, table.schema, columns)
        return table.select(columns)
    elif where.endswith(".parquet"):
        dataset = pds.dataset(where, format="parquet", filesystem=filesystem)
        schema, source = dataset.schema, where
    else:
        raise DataError(f"{path}: expected a .csv (optionally compressed) or .parquet file, "
                        "or a directory of Parquet files.")
    _check_columns(source, schema, columns)
    return dataset.to_table(columns=columns)


def parquet_shards(path: str) -> list[str]:
    """The Parquet files of a directory `path` (as paths or URIs like `path`), or [path]
    for a single file."""
    filesystem, where = filesystem_of(path)
    if filesystem.get_file_info(where).type != pafs.FileType.Directory:
        return [path]
    scheme = path.split("://")[0] + "://" if "://" in path else ""
    selector = pafs.FileSelector(where, recursive=True)
    return sorted(scheme + info.path for info in filesystem.get_file_info(selector)
                  if info.path.endswith(".parquet"))


def _check_columns(path: str, schema: pa.Schema, columns: list[str]) -> None:
    missing = [name for name in columns if name not in schema.names]
    if missing:
        raise DataError(f"{path}: column `{missing[0]}` is missing; the table has columns "
                        f"{', '.join(schema.names)}.")


def filesystem_of(path: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI (s3://, gs://), or the local one for a plain path."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(f"{path}: cannot open this location ({error}).") from None
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def write_text(directory: str, name: str, text: str) -> None:
    """`text` as the file `name` in `directory` (local or a URI)."""
    filesystem, root = filesystem_of(directory)
    with filesystem.open_output_stream(f"{root}/{name}") as stream:
        stream.write(text.encode())


def read_text(directory: str, name: str) -> str | None:
    """The file `name` in `directory` (local or a URI) as text; None when there is none."""
    filesystem, root = filesystem_of(directory)
    where = f"{root}/{name}"
    if filesystem.get_file_info(where).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(where) as stream:
        return stream.read().decode()


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write `table` as CSV or Parquet, by the file name's suffix. Times in whole seconds
    are written as such (CSV would otherwise spell out nine zeros of nanoseconds)."""
    path = str(path)
    for index, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            try:
                table = table.set_column(index, field.name,
                                         pc.cast(table[field.name], pa.timestamp("s")))
            except pa.ArrowInvalid:  # sub-second times stay as they are
                pass
    if path.endswith(".parquet"):
        pq.write_table(table, path)
    elif path.endswith(".csv"):
        pcsv.write_csv(table, path)
    else:
        raise DataError(f"{path}: expected an output file ending in .csv or .parquet.")
