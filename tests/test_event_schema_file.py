"""An event schema declared in YAML (kubeloop.event_schema_file): what it builds, and the
one-line errors of a file that does not declare one."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pytest

import kubeloop.event_schema_file
from kubeloop.event_schema_file import load_event_schema
from kubeloop.usecase import TIMESTAMP, UseCaseError

# The module's own example (its docstring), so that the documented form stays loadable.
EXAMPLE = kubeloop.event_schema_file.__doc__.split("```yaml\n")[1].split("```")[0]
# The example with an oracle and delayed labels.
SCHEMA = (
    EXAMPLE.replace("purchased: int64", "purchased: int64\n  purchased_at: timestamp\n  p: float64")
    .replace("oracle: null", "oracle: p")
    .replace("label_delay: null", "label_delay: 2d12h")
    .replace("label_time: null", "label_time: purchased_at")
)


def write(tmp_path, text: str):
    path = tmp_path / "events.yaml"
    path.write_text(text)
    return path


def test_the_documented_example_loads(tmp_path):
    events = load_event_schema(write(tmp_path, EXAMPLE))
    assert events.columns.names[-1] == "purchased"
    assert (events.oracle, events.label_delay, events.label_time) == (None, None, None)


def test_a_file_declares_columns_in_order_and_their_roles(tmp_path):
    events = load_event_schema(write(tmp_path, SCHEMA))
    assert events.columns.names[:3] == ["event_id", "event_timestamp", "customer_id"]
    assert events.columns.field("event_timestamp").type == TIMESTAMP
    assert events.columns.field("p").type == pa.float64()
    assert events.entity_keys == ("customer_id",)
    assert (events.label, events.oracle) == ("purchased", "p")
    assert events.context_numeric == ("basket_value",)
    assert events.context_categorical == ("channel",)
    assert dict(events.context_ranges) == {"basket_value": (0, 100000)}
    assert events.label_delay == timedelta(days=2, hours=12)
    assert events.label_time == "purchased_at"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("label: purchased", "label: purchased\nlabels: x"), "labels"),  # unknown key
        (("channel: string", "channel: text"), "columns.channel"),  # unknown type
        (("label_delay: 2d12h", "label_delay: soon"), "invalid duration"),
        (("label: purchased", "label: bought"), "bought"),  # a role naming no column
        (("{basket_value: [0, 100000]}", "{basket_value: [0]}"), "basket_value"),  # no high
    ],
)
def test_a_file_that_declares_no_schema_is_one_line_naming_it(tmp_path, change, words):
    path = write(tmp_path, SCHEMA.replace(*change))
    with pytest.raises(UseCaseError) as err:
        load_event_schema(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and words in message


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(UseCaseError, match="events.yaml"):
        load_event_schema(tmp_path / "events.yaml")
