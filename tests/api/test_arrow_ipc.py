"""Arrow answers carry `metric` as indices into the query's metrics, read back as the names."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import arrow_ipc, render
from engine.registry import METRICS
from engine.shapes import schema_for

# Names of one length, and one a prefix of another: a batch of one of them must not pass
# for a batch of the other.
NAMES = ("ab", "aba", "abab", "ba", "bab")


def batch_of(metrics: list[str], first_ts: int = 0) -> pa.RecordBatch:
    rows = len(metrics)
    columns = {
        "user_id": pa.array([1] * rows, pa.int32()),
        "metric": pa.array(metrics, pa.string()),
        "ts": pa.array(range(first_ts, first_ts + rows), pa.int64()).cast(
            schema_for("raw")[2].type
        ),
        "value": pa.array([float(i) for i in range(rows)], pa.float64()),
    }
    return pa.RecordBatch.from_pydict(columns, schema=schema_for("raw"))


def streamed(batches: list[pa.RecordBatch], metrics: tuple[str, ...]) -> pa.Table:
    chunks = render.stream("arrow", iter(batches), schema_for("raw"), metrics, 64)
    return ipc.open_stream(b"".join(chunks)).read_all()


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[pa.RecordBatch], tuple[str, ...]]:
    """Batches of one name each (a long answer's, series by series), of several, or sliced;
    and the query's metrics: the names the rows hold, and maybe one more."""
    batches = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            names = [draw(st.sampled_from(NAMES))] * draw(st.integers(0, 200))
        else:
            names = draw(st.lists(st.sampled_from(NAMES), max_size=200))
        batch = batch_of(names)
        if draw(st.booleans()) and batch.num_rows > 2:
            batch = batch.slice(1, batch.num_rows - 2)
        batches.append(batch)
    held = {name for batch in batches for name in batch.column("metric").to_pylist()}
    more = draw(st.sets(st.sampled_from(NAMES)))
    return batches, tuple(sorted(held | more)) or ("ab",)


@settings(max_examples=200, deadline=None)
@given(answers())
def test_metric_streams_as_indices_into_the_querys_metrics(
    answer: tuple[list[pa.RecordBatch], tuple[str, ...]],
) -> None:
    batches, metrics = answer
    table = streamed(batches, metrics)
    assert table.schema.field("metric").type == pa.dictionary(pa.int8(), pa.string())
    for chunk in table.column("metric").chunks:
        assert chunk.dictionary.to_pylist() == list(metrics)
    sent = pa.Table.from_batches(batches, schema=schema_for("raw"))
    assert table.column("metric").to_pylist() == sent.column("metric").to_pylist()
    assert table.drop_columns(["metric"]).equals(sent.drop_columns(["metric"]))


def test_a_query_of_one_metric_streams_its_every_row_as_it() -> None:
    table = streamed([batch_of(["heart_rate"] * 1_000)], ("heart_rate",))
    assert table.column("metric").to_pylist() == ["heart_rate"] * 1_000


@pytest.mark.parametrize("names", [["ab", "ba", "zz"], ["zz"] * 3], ids=["mixed", "one name"])
def test_a_row_of_a_metric_the_query_did_not_ask_is_never_streamed(names: list[str]) -> None:
    with pytest.raises(ValueError, match="not one of the query's"):
        streamed([batch_of(names)], ("ab", "ba"))


def test_the_registry_fits_the_int8_indices() -> None:
    assert len(METRICS) <= 127
    assert arrow_ipc.METRIC_TYPE.index_type == pa.int8()


def test_a_batch_whose_bytes_repeat_a_name_is_not_taken_for_that_name() -> None:
    """Rows "ab", "a", "bab" are "ab" three times, in bytes and in length."""
    table = streamed([batch_of(["ab", "a", "bab"])], ("a", "ab", "bab"))
    assert table.column("metric").to_pylist() == ["ab", "a", "bab"]


def test_a_batch_with_another_dictionary_is_refused_not_misread() -> None:
    """A stream sends a dictionary once: a later batch indexing another would be read with
    the wrong names."""
    encoded = arrow_ipc.answer_schema(schema_for("raw"))
    first, second = (
        next(arrow_ipc.with_metric_codes([batch_of(["ab"])], schema_for("raw"), metrics))
        for metrics in (("ab", "ba"), ("ab", "zz"))
    )
    with pytest.raises(pa.ArrowInvalid, match="dictionary differs"):
        list(arrow_ipc.messages(iter([first, second]), encoded))
