"""Spark reads the lake as it is: Hive partition discovery, the same counts as DuckDB, int64 nanosecond times.

Needs ``pyspark`` (test dependency) and a Java 17+ runtime (Debian: ``openjdk-17-jre-headless``); skipped with the
reason when either is missing. One local SparkSession (loopback only, no UI) serves every test of this module.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from opentelemetry.exporter.runlake.layout import SPANS, table_files

import runlake
from runlake.instrument import shifted_clock

pytestmark = pytest.mark.slow

pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'pyspark>=3.5')")

# hostile ids (a slash, non-ASCII, an all-digit id that partition inference would turn into a number) and a plain one
SESSIONS = ["a/b", "über 🙂", "0123456789", "plain-session"]
DAYS_AGO = (3, 2, 1, 0)  # the history spreads over four UTC days
PARTITIONS = ("tenant", "ttl", "day", "session")
NS = 1_000_000_000


def _java_home() -> str | None:
    """A Java 17+ home: JAVA_HOME, the ``java`` on PATH, or a JDK/JRE 17+ under /usr/lib/jvm."""
    if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").exists():
        return os.environ["JAVA_HOME"]
    on_path = shutil.which("java")
    if on_path:
        return str(Path(os.path.realpath(on_path)).parent.parent)
    jvm = Path("/usr/lib/jvm")
    for candidate in [*sorted(jvm.glob("*17*")), *sorted(jvm.glob("*-2[1-9]*"))]:
        if (candidate / "bin" / "java").exists():
            return str(candidate)
    return None


def _java_version(home: str) -> int:
    out = subprocess.run([str(Path(home, "bin", "java")), "-version"], capture_output=True, text=True, timeout=30)
    text = (out.stderr or out.stdout).split('"')
    major = text[1].split(".")[0] if len(text) > 1 else "0"
    return int(major) if major.isdigit() else 0


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    home = _java_home()
    if home is None:
        pytest.skip("no Java runtime for Spark (Debian: apt-get install openjdk-17-jre-headless)")
    if _java_version(home) < 17:
        pytest.skip(f"Spark {pyspark.__version__} needs Java 17+; found an older one in {home}")
    saved = {k: os.environ.get(k) for k in ("JAVA_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    os.environ["JAVA_HOME"] = home
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    scratch = tmp_path_factory.mktemp("spark")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("runlake-test-spark")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Djava.io.tmpdir={scratch} -Dderby.system.home={scratch}")
        # all-digit partition values ("0123456789", "30") stay strings
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def spark_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small lake written through the real instrumentation: 4 sessions × 4 days, 2 tenants, 2 TTLs."""
    root = tmp_path_factory.mktemp("spark-lake") / "lake"
    runlake.configure(root, service_name="spark-test")
    today = dt.datetime.now(dt.timezone.utc).date()
    try:
        for days_ago in DAYS_AGO:
            for k, session in enumerate(SESSIONS):
                tenant = "tenant-b" if k == 3 else None
                at = dt.datetime.combine(today - dt.timedelta(days=days_ago), dt.time(0, 30 + k), dt.timezone.utc)
                with shifted_clock(at.timestamp() - time.time()) as advance:  # 00:3k UTC: no run crosses midnight
                    with runlake.run(
                        "spark-agent",
                        session,
                        user_id=f"user-{k}",
                        tenant_id=tenant,
                        ttl_days=7 if k == 2 else 30,
                        input=f"question {k}",
                    ) as r:
                        with runlake.turn(f"turn-{days_ago}-{k}"):
                            with runlake.node("plan", type="llm", input="plan it") as n:
                                n.set_usage(100, 20)
                                advance(0.5)
                                n.set_output("a plan")
                            for step in range(k + 1):
                                with runlake.node(f"tool-{step}", type="tool", input={"step": step}) as n:
                                    advance(0.1)
                                    n.set_output("done")
                        r.set_output(f"answer {k}")
        assert runlake.force_flush()
    finally:
        runlake.shutdown()
    return root


def _duckdb_counts(root: Path) -> dict[tuple[str, str], int]:
    """Rows per (session_id, day) read by DuckDB from runlake's own file listing (day from the folder name)."""
    files = [str(p) for p in table_files(root, SPANS)]
    con = duckdb.connect()
    rows = con.execute(
        "SELECT session_id, regexp_extract(filename, '/day=([0-9-]+)/', 1) AS day, count(*) "
        "FROM read_parquet(?, union_by_name=true, filename=true) GROUP BY 1, 2",
        [files],
    ).fetchall()
    return {(s, d): n for s, d, n in rows}


def test_partition_columns_are_discovered_as_strings(spark: object, spark_lake: Path) -> None:
    from pyspark.sql.types import StringType

    lake = spark_lake
    df = spark.read.parquet(str(lake / "spans"))  # type: ignore[attr-defined]
    fields = {f.name: f.dataType for f in df.schema.fields}
    for column in PARTITIONS:
        assert column in fields, f"partition column {column!r} not discovered: {sorted(fields)}"
        assert isinstance(fields[column], StringType), f"{column} inferred as {fields[column]}"
    seen = df.select(*PARTITIONS, "session_id", "tenant_id", "ttl_days").distinct().collect()  # one Spark job
    found = {r["session"]: r["session_id"] for r in seen}
    assert set(found.values()) == set(SESSIONS)
    for folder_value, session_id in found.items():
        # Spark unescapes %XX byte by byte (ExternalCatalogUtils.unescapePathName): ASCII ids come back exactly,
        # a non-ASCII id as the Latin-1 reading of its UTF-8 bytes. The exact id is always the session_id column.
        assert folder_value.encode("latin-1").decode("utf-8") == session_id
    assert found["0123456789"] == "0123456789" and found["a/b"] == "a/b"
    assert found["über 🙂".encode().decode("latin-1")] == "über 🙂"
    assert len({r["day"] for r in seen}) >= 3
    assert {r["tenant"] for r in seen} == {"default", "tenant-b"}
    assert {(r["ttl"], r["ttl_days"]) for r in seen} == {("7", 7), ("30", 30)}
    assert all(r["tenant"] == r["tenant_id"] for r in seen)


def test_counts_per_session_and_day_equal_duckdb(spark: object, spark_lake: Path) -> None:
    lake = spark_lake
    df = spark.read.parquet(str(lake / "spans"))  # type: ignore[attr-defined]
    by_spark = {(r["session_id"], r["day"]): r["count"] for r in df.groupBy("session_id", "day").count().collect()}
    by_duckdb = _duckdb_counts(lake)
    assert by_spark == by_duckdb
    assert len(by_spark) == len(SESSIONS) * len(DAYS_AGO)
    # and the runs index: one end row per run (plus start rows) in both engines
    runs = spark.read.parquet(str(lake / "runs"))  # type: ignore[attr-defined]
    assert runs.filter("record = 'end'").count() == len(SESSIONS) * len(DAYS_AGO)
    run_files = [str(p) for p in table_files(lake, "runs")]
    assert runs.count() == duckdb.execute("SELECT count(*) FROM read_parquet(?)", [run_files]).fetchone()[0]


def test_times_are_int64_nanoseconds_and_convert_to_timestamps(spark: object, spark_lake: Path) -> None:
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.types import LongType

    lake = spark_lake
    df = spark.read.parquet(str(lake / "spans"))  # type: ignore[attr-defined]
    fields = {f.name: f.dataType for f in df.schema.fields}
    assert isinstance(fields["start_time_unix_nano"], LongType)
    assert isinstance(fields["end_time_unix_nano"], LongType)
    ends = df.filter("record = 'end'").select(
        "day",
        "start_time_unix_nano",
        "end_time_unix_nano",
        # integer division: "/ 1000" is a double division and loses the last digits of a ~1.8e18 value
        F.expr("timestamp_micros(start_time_unix_nano div 1000)").alias("start_ts"),
        F.expr("timestamp_micros(end_time_unix_nano div 1000)").alias("end_ts"),
    )
    rows = ends.select(
        "*", F.unix_micros("start_ts").alias("start_us"), F.unix_micros("end_ts").alias("end_us")
    ).collect()
    assert rows
    for r in rows:
        assert r["start_us"] == r["start_time_unix_nano"] // 1000  # exact to the microsecond
        assert r["end_us"] == r["end_time_unix_nano"] // 1000 and r["end_us"] >= r["start_us"]
    # the day folder is the UTC day of the span's start, as Spark computes it from the int64 column
    mismatched = ends.filter(F.to_date("start_ts") != F.to_date(F.col("day"))).count()
    assert mismatched == 0
    lo, hi = ends.agg(F.min("start_ts"), F.max("start_ts")).first()
    assert (hi - lo) >= dt.timedelta(days=max(DAYS_AGO) - 1)
