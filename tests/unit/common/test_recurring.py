"""Recurring entries: due times (cronsim, zoneinfo, periods) and the master's plan."""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import pytest

from circus_djmaster.common.recurring import RecurringJob
from circus_djmaster.config.settings import parse_settings
from circus_djmaster.exceptions import SettingsError
from circus_djmaster.master.recurring import GRACE, plan_recurring, seconds_to_next_due
from circus_djmaster.store.statements import RecurringState

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

UTC = dt.timezone.utc


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_period_is_anchored_on_the_epoch_so_every_host_agrees() -> None:
    entry = RecurringJob("tick", "m:f", every=2.0)
    assert entry.latest_due(at("2030-01-01T00:00:05.300")) == at("2030-01-01T00:00:04")
    assert entry.next_due(at("2030-01-01T00:00:05.300")) == at("2030-01-01T00:00:06")
    assert entry.latest_due(at("2030-01-01T00:00:06")) == at("2030-01-01T00:00:06")


def test_a_cron_expression_is_evaluated_in_its_time_zone() -> None:
    entry = RecurringJob("nightly", "m:f", cron="0 3 * * *", timezone="Europe/Paris")
    # 03:00 in Paris is 02:00 UTC in winter, 01:00 UTC in summer.
    assert entry.next_due(at("2030-01-10T12:00")) == at("2030-01-11T02:00")
    assert entry.next_due(at("2030-07-10T12:00")) == at("2030-07-11T01:00")
    assert entry.latest_due(at("2030-01-11T02:00:30")) == at("2030-01-11T02:00")
    assert entry.latest_due(at("2030-01-11T01:59:59")) == at("2030-01-10T02:00")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "61 * * * *"}, "is not a cron expression"),
        ({"cron": "* * *"}, "is not a cron expression"),
        ({"every": 0.0}, "more than 0"),
        ({}, "give cron or every"),
        ({"cron": "* * * * *", "every": 5.0}, "give cron or every"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "is not a time zone"),
    ],
)
def test_a_bad_entry_says_why(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RecurringJob("x", "m:f", **fields)  # type: ignore[arg-type]


def state(now: str, **last: str | None) -> RecurringState:
    return RecurringState(at(now), {name: at(v) if v else None for name, v in last.items()})


def test_the_plan_enqueues_a_due_time_once_and_only_while_it_is_on_time() -> None:
    tick = RecurringJob("tick", "m:f", every=60.0)
    # Due at 10:00, now 10:00:00.5: enqueue it.
    (due,) = plan_recurring([tick], state("2030-01-01T10:00:00.500", tick=None))
    assert due.due_at == at("2030-01-01T10:00") and not due.caught_up
    # Enqueued already (by any master): nothing.
    assert plan_recurring([tick], state("2030-01-01T10:00:30", tick="2030-01-01T10:00")) == []
    # A master that starts 10 minutes late skips what it missed: next one at 10:11.
    late = state("2030-01-01T10:10:30", tick="2030-01-01T10:00")
    assert plan_recurring([tick], late, grace=20) == []
    assert seconds_to_next_due([tick], late.now) == 30


def test_catch_up_enqueues_only_the_last_missed_due_time_of_an_entry_that_ran() -> None:
    nightly = RecurringJob("nightly", "m:f", cron="0 3 * * *", catch_up=True)
    down = state("2030-01-05T12:00", nightly="2030-01-01T03:00")  # 4 nights missed
    (due,) = plan_recurring([nightly], down)
    assert (due.due_at, due.caught_up) == (at("2030-01-05T03:00"), True)
    # A new entry does not catch up: it starts with its next due time.
    assert plan_recurring([nightly], state("2030-01-05T12:00", nightly=None)) == []
    assert GRACE < 12 * 3600


def test_settings_entries_are_loaded_and_bad_ones_reported_with_file_key_and_reason(
    tmp_path: Path,
) -> None:
    data = {
        "databases": {"primary": "postgresql:///a", "secondary": "postgresql:///b"},
        "workers": [{"queues": ["q"]}],
        "recurring": [
            {"name": "tick", "callable": "m:tick", "every": "2s", "args": [1], "queue": "q"},
            {"name": "nightly", "callable": "m:n", "cron": "0 3 * * *", "database": "secondary",
             "timezone": "Europe/Paris", "catch_up": True, "kwargs": {"to": "ops"}},
        ],
    }  # fmt: skip
    settings = parse_settings(data, tmp_path / "djmaster.toml")
    tick, nightly = settings.recurring
    assert (tick.every, tick.args, tick.queue, tick.database) == (2.0, (1,), "q", "primary")
    assert (nightly.cron, nightly.database, nightly.catch_up) == ("0 3 * * *", "secondary", True)
    assert nightly.kwargs == {"to": "ops"}

    data["recurring"] = [
        {"name": "a", "callable": "m:f", "cron": "99 * * * *"},
        {"name": "a", "callable": "m:f", "every": "1s", "cron": "* * * * *"},
        {"callable": "m:f", "every": "1s", "database": "nope"},
        {"name": "b", "callable": "m:f"},
    ]
    with pytest.raises(SettingsError) as caught:
        parse_settings(data, tmp_path / "djmaster.toml")
    lines = str(caught.value).splitlines()
    path = tmp_path / "djmaster.toml"
    assert f'{path}: recurring[0].cron: "99 * * * *" is not a cron expression: Bad minute' in lines
    assert f"{path}: recurring[1].every: give cron or every, not both" in lines
    assert any(line.startswith(f"{path}: recurring[1].name: duplicate name") for line in lines)
    assert f"{path}: recurring[2].name: required" in lines
    assert any(line.startswith(f"{path}: recurring[2].database: no database") for line in lines)
    assert f"{path}: recurring[3]: give cron or every" in lines


def test_the_readmes_recurring_example_is_a_valid_settings_file(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    (block,) = [
        b for b in re.findall(r"```toml\n(.*?)```", readme, re.DOTALL) if "[[recurring]]" in b
    ]
    data = tomllib.loads(block) | {"workers": [{"queues": ["reports", "default"]}]}
    nightly, heartbeat = parse_settings(data, tmp_path / "djmaster.toml").recurring
    assert (nightly.cron, nightly.timezone, nightly.kwargs) == (
        "0 3 * * *",
        "Europe/Paris",
        {"to": "ops@example.com"},
    )
    assert (heartbeat.every, heartbeat.catch_up) == (30.0, False)
