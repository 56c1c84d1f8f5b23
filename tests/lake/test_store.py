"""Lake: round trips, exact partition replacement, pruning, pinned versions, day stats."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from pyarrow.fs import FileSelector

from lake import TIERS, Lake, LakeFiles, day_checksums
from lake.layout import data_schema, file_schema
from tests.lake.builders import (
    ALL_TIME,
    JAN1,
    day_start,
    days_from,
    read_all,
    read_files,
    sorted_rows,
    tier_rows,
    with_partition_column,
)


def relative_dirs(lake: Lake, tier: str) -> set[str]:
    files = lake.files(tier, None, *ALL_TIME).files
    return {lake.relative_path(tier, f).rsplit("/", 1)[0] for f in files}


@pytest.mark.parametrize("tier", TIERS)
def test_round_trip_per_tier(lake: Lake, tier: str) -> None:
    pairs = [(u, d) for u in (1, 2) for d in days_from(date(2024, 1, 30), 3)]
    source = tier_rows(tier, pairs)
    assert lake.version(tier) is None

    version = lake.replace_days(tier, source, pairs)

    assert lake.version(tier) == version
    assert sorted_rows(tier, read_all(lake, tier)) == sorted_rows(tier, source)
    expected_dirs = {
        "raw": {f"user_id={u}/month={m}" for u in (1, 2) for m in ("2024-01", "2024-02")},
        "agg_1m": {f"user_id={u}/month={m}" for u in (1, 2) for m in ("2024-01", "2024-02")},
        "agg_1h": {f"user_id={u}/month={m}" for u in (1, 2) for m in ("2024-01", "2024-02")},
        "agg_1d": {"user_id=1/year=2024", "user_id=2/year=2024"},
    }[tier]
    assert relative_dirs(lake, tier) == expected_dirs


@pytest.mark.parametrize("tier", ["raw", "agg_1h"])
def test_files_are_sorted_zstd_with_statistics(lake: Lake, tier: str) -> None:
    pairs = [(1, d) for d in days_from(JAN1, 2)]
    shuffled = tier_rows(tier, pairs, metrics=("steps", "hr", "spo2"))
    shuffled = shuffled.take(pa.array(list(range(shuffled.num_rows))[::-1]))
    lake.replace_days(tier, shuffled, pairs)

    for lake_file in lake.files(tier, None, *ALL_TIME).files:
        parquet = pq.ParquetFile(lake_file.path)
        assert parquet.schema_arrow.names == file_schema(tier).names  # no partition columns
        content = parquet.read()
        keys = [("metric", "ascending"), ("ts", "ascending")]
        assert content.equals(content.sort_by(keys))
        assert content.num_rows == lake_file.rows
        column = parquet.metadata.row_group(0).column(content.schema.get_field_index("ts"))
        assert column.compression == "ZSTD"
        assert column.statistics is not None and column.statistics.has_min_max


def test_replace_days_replaces_exactly_those_days(lake: Lake) -> None:
    days = days_from(JAN1, 4)
    pairs = [(u, d) for u in (1, 2) for d in days]
    first = tier_rows("raw", pairs, seed=1)
    v1 = lake.replace_days("raw", first, pairs)
    old_file = lake.files("raw", [1], day_start(days[1]), day_start(days[2])).files[0]

    replaced = [(1, days[1]), (2, days[3])]
    second = tier_rows("raw", replaced, seed=2, metrics=("hr",))
    v2 = lake.replace_days("raw", second, replaced)

    assert v2 == v1 + 1
    expected = pa.concat_tables(
        [
            first.filter(
                pc.invert(
                    pc.or_(
                        pc.and_(pc.equal(first["user_id"], 1), pc.equal(first["date"], days[1])),
                        pc.and_(pc.equal(first["user_id"], 2), pc.equal(first["date"], days[3])),
                    )
                )
            ),
            second,
        ]
    )
    assert sorted_rows("raw", read_all(lake, "raw")) == sorted_rows("raw", expected)
    assert lake.storage.exists(old_file.path)  # older readers keep working
    # One file per user held the four days; each is rewritten with its kept days and the new.
    assert len(lake.files("raw", None, *ALL_TIME).files) == 2


def test_empty_replacement_removes_the_days(lake: Lake) -> None:
    pairs = [(1, d) for d in days_from(JAN1, 4)]
    source = tier_rows("raw", pairs)
    lake.replace_days("raw", source.filter(pc.equal(source["date"], JAN1)), pairs[:1])
    v1 = lake.replace_days("raw", source.filter(pc.not_equal(source["date"], JAN1)), pairs[1:])

    v2 = lake.replace_days("raw", data_schema("raw").empty_table(), pairs[:2])

    assert v2 == v1 + 1
    (listed,) = lake.files("raw", None, *ALL_TIME).files  # day 1's file is gone
    assert (listed.first_day, listed.last_day) == (pairs[2][1], pairs[3][1])
    assert lake.day_stats("raw", pairs[:2]) == {pairs[0]: (0, 0), pairs[1]: (0, 0)}
    kept = day_checksums("raw", source)
    assert lake.day_stats("raw", pairs[2:]) == {p: kept[p] for p in pairs[2:]}


def test_replace_without_changes_makes_no_commit(lake: Lake) -> None:
    empty = data_schema("raw").empty_table()
    created = lake.replace_days("raw", empty, [(1, JAN1)])
    assert lake.replace_days("raw", empty, [(1, JAN1)]) == created == lake.version("raw")


def test_coarse_tier_replaces_the_whole_month(lake: Lake) -> None:
    january = [(1, d) for d in days_from(JAN1, 31)]
    february = [(1, d) for d in days_from(date(2024, 2, 1), 3)]
    lake.replace_days("agg_1h", tier_rows("agg_1h", january + february), january + february)
    assert len(lake.files("agg_1h", [1], *ALL_TIME).files) == 2

    # One day named, but its partition is the month: the data must carry the whole month.
    new_january = tier_rows("agg_1h", january, seed=9)
    lake.replace_days("agg_1h", new_january, [(1, date(2024, 1, 5))])

    stats = lake.day_stats("agg_1h", january + february)
    assert {p: stats[p] for p in january} == day_checksums("agg_1h", new_january)
    assert {p: stats[p] for p in february} == day_checksums(
        "agg_1h",
        tier_rows("agg_1h", january + february).filter(
            pc.greater_equal(pc.field("date"), date(2024, 2, 1))
        ),
    )


def test_coarse_file_days_come_from_the_rows(lake: Lake) -> None:
    pairs = [(7, d) for d in days_from(date(2024, 3, 3), 3)]
    lake.replace_days("agg_1d", tier_rows("agg_1d", pairs), pairs)

    (only,) = lake.files("agg_1d", [7], *ALL_TIME).files
    assert (only.first_day, only.last_day) == (date(2024, 3, 3), date(2024, 3, 5))
    june = datetime(2024, 6, 1, tzinfo=UTC)
    assert lake.files("agg_1d", [7], june, june + timedelta(days=30)).files == ()


def test_derived_partition_column_is_checked(lake: Lake) -> None:
    pairs = [(1, JAN1)]
    rows = tier_rows("agg_1h", pairs)
    good = rows.append_column("month", pa.array(["2024-01"] * rows.num_rows))
    lake.replace_days("agg_1h", good, pairs)
    bad = rows.append_column("month", pa.array(["2024-02"] * rows.num_rows))
    with pytest.raises(ValueError, match="month"):
        lake.replace_days("agg_1h", bad, pairs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("outside", "outside the replaced days"),
        ("date", "UTC date of 'ts'"),
        ("missing", "columns missing"),
        ("extra", "unexpected"),
        ("null", "NULL"),
    ],
)
def test_replace_days_rejects_bad_input(lake: Lake, change: str, message: str) -> None:
    pairs = [(1, JAN1), (1, JAN1 + timedelta(days=1))]
    rows = tier_rows("raw", pairs)
    named = pairs
    if change == "outside":
        named = pairs[:1]
    elif change == "date":
        rows = rows.set_column(1, "date", pa.array([JAN1] * rows.num_rows, pa.date32()))
    elif change == "missing":
        rows = rows.drop_columns(["value"])
    elif change == "extra":
        rows = rows.append_column("note", pa.array(["x"] * rows.num_rows))
    elif change == "null":
        rows = rows.set_column(2, "metric", pa.array([None] * rows.num_rows, pa.string()))
    with pytest.raises(ValueError, match=message):
        lake.replace_days("raw", rows, named)
    assert lake.version("raw") is None  # nothing was committed


def test_unknown_tier_and_naive_times_are_rejected(lake: Lake) -> None:
    with pytest.raises(ValueError, match="unknown tier"):
        lake.version("agg_5m")
    with pytest.raises(ValueError, match="timezone-aware"):
        lake.files("raw", None, datetime(2024, 1, 1), datetime(2024, 1, 2, tzinfo=UTC))
    with pytest.raises(TypeError, match="datetime.date"):
        lake.replace_days("raw", data_schema("raw").empty_table(), [(1, day_start(JAN1))])


def test_files_prunes_by_users_and_time_range(lake: Lake) -> None:
    days = days_from(JAN1, 5)
    for day in days:  # one file per day: what the nightly sync writes
        pairs = [(u, day) for u in (1, 2, 3)]
        lake.replace_days("raw", tier_rows("raw", pairs, metrics=("hr",)), pairs)

    def listed(users: list[int] | None, start: datetime, end: datetime) -> list[tuple[int, date]]:
        return [(f.user_id, f.first_day) for f in lake.files("raw", users, start, end).files]

    start = day_start(days[1]) + timedelta(hours=12)
    end = day_start(days[3])  # exclusive: day 3 is not listed
    assert listed([3, 1], start, end) == [(1, days[1]), (1, days[2]), (3, days[1]), (3, days[2])]
    assert listed(None, start, end) == [(u, d) for u in (1, 2, 3) for d in days[1:3]]
    assert listed([1], end, end + timedelta(microseconds=1)) == [(1, days[3])]
    assert listed([1], end, start) == []
    assert listed([99], *ALL_TIME) == []
    # Other time zones are converted: 01:00+02:00 on day 2 is 23:00 UTC on day 1.
    plus_two = timezone(timedelta(hours=2))
    local = datetime(days[2].year, days[2].month, days[2].day, 1, tzinfo=plus_two)
    assert listed([2], local, local + timedelta(minutes=30)) == [(2, days[1])]


def test_files_of_missing_table(lake: Lake) -> None:
    assert lake.files("agg_1m", None, *ALL_TIME) == LakeFiles("agg_1m", None, ())
    assert lake.total_bytes() == 0


def test_pinned_version_keeps_listing_and_reading_old_files(lake: Lake) -> None:
    pairs = [(u, d) for u in (1, 2) for d in days_from(JAN1, 2)]
    first = tier_rows("raw", pairs, seed=1)
    v1 = lake.replace_days("raw", first, pairs)
    pinned = lake.files("raw", None, *ALL_TIME)
    assert pinned.version == v1

    second = tier_rows("raw", pairs, seed=2)
    v2 = lake.replace_days("raw", second, pairs)

    assert v2 == v1 + 1
    again = lake.files("raw", None, *ALL_TIME, version=v1)
    assert again == pinned
    assert all(lake.storage.exists(p) for p in pinned.paths)
    assert sorted_rows("raw", read_files(lake, pinned)) == sorted_rows("raw", first)
    assert sorted_rows("raw", read_all(lake, "raw")) == sorted_rows("raw", second)
    assert set(lake.files("raw", None, *ALL_TIME).paths).isdisjoint(pinned.paths)
    with pytest.raises(ValueError, match="does not exist"):
        lake.files("raw", None, *ALL_TIME, version=v2 + 1)


def test_a_second_lake_sees_new_commits(tmp_path: Path) -> None:
    writer, reader = Lake(tmp_path / "lake"), Lake(tmp_path / "lake")
    pairs = [(1, d) for d in days_from(JAN1, 3)]
    writer.replace_days("raw", tier_rows("raw", pairs[:1]), pairs[:1])
    assert len(reader.files("raw", None, *ALL_TIME).files) == 1

    version = writer.replace_days("raw", tier_rows("raw", pairs[1:]), pairs[1:])

    listed = reader.files("raw", None, *ALL_TIME)
    assert (listed.version, len(listed.files)) == (version, 2)
    assert reader.total_bytes("raw") == sum(f.size_bytes for f in listed.files) > 0


@pytest.mark.parametrize("tier", TIERS)
def test_day_stats_equal_checksums_of_the_source(lake: Lake, tier: str) -> None:
    pairs = [(u, d) for u in (1, 2) for d in days_from(date(2024, 2, 27), 4)]
    source = tier_rows(tier, pairs)
    lake.replace_days(tier, source, pairs)

    missing = (3, JAN1)
    stats = lake.day_stats(tier, [*pairs, missing])

    assert {p: stats[p] for p in pairs} == day_checksums(tier, source)
    assert stats[missing] == (0, 0)


def test_checkpoints_keep_a_long_log_loadable(lake: Lake) -> None:
    for day in days_from(JAN1, 52):
        lake.replace_days("agg_1d", tier_rows("agg_1d", [(1, day)]), [(1, day)])
    log = lake.storage.fs_path(f"{lake.table_dir('agg_1d')}/_delta_log")
    names = [i.path for i in lake.storage.filesystem.get_file_info(FileSelector(log))]
    assert [name for name in names if name.endswith(".checkpoint.parquet")]
    fresh = Lake(lake.root)
    assert fresh.version("agg_1d") == 52
    (only,) = fresh.files("agg_1d", [1], *ALL_TIME).files
    assert (only.first_day, only.rows) == (JAN1 + timedelta(days=51), 2)  # hr and steps


def test_rows_in_any_order_land_sorted_and_whole(lake: Lake) -> None:
    pairs = [(u, d) for u in (1, 2) for d in days_from(JAN1, 2)]
    source = tier_rows("raw", pairs, metrics=("hr", "spo2"))
    interleaved = source.sort_by([("ts", "descending"), ("user_id", "ascending")])
    lake.replace_days("raw", interleaved, pairs)
    assert sorted_rows("raw", read_all(lake, "raw")) == sorted_rows("raw", source)
    assert lake.day_stats("raw", pairs) == day_checksums("raw", source)


def test_incremental_refresh_matches_a_cold_load(lake: Lake) -> None:
    days = days_from(date(2024, 1, 30), 4)
    pairs = [(u, d) for u in (1, 2, 3) for d in days]
    watcher = Lake(lake.root)  # follows every commit through the JSON log

    def same_as_cold() -> None:
        for tier in ("raw", "agg_1h"):
            cold = Lake(lake.root).files(tier, None, *ALL_TIME)
            assert watcher.files(tier, None, *ALL_TIME) == cold
            for users in ([1], [2, 3]):
                span = (day_start(days[1]), day_start(days[3]))
                assert watcher.files(tier, users, *span) == Lake(lake.root).files(
                    tier, users, *span
                )

    for tier in ("raw", "agg_1h"):
        lake.replace_days(tier, tier_rows(tier, pairs), pairs)
        same_as_cold()
        lake.replace_days(tier, tier_rows(tier, pairs[:2], seed=3), pairs[:2])
        same_as_cold()
        lake.replace_days(tier, data_schema(tier).empty_table(), [(3, days[0]), (3, days[1])])
        same_as_cold()
    write_deltalake(
        lake.table_dir("raw"),
        with_partition_column("raw", tier_rows("raw", pairs[5:6], metrics=("x",))),
        mode="append",
        storage_options=lake.storage.storage_options,
    )
    same_as_cold()
    lake.compact("raw")
    same_as_cold()
    lake.vacuum(retention_hours=0)
    same_as_cold()
