"""The result contract: statuses are plain strings where files and YAML need them, and the key
names are distinct."""

from typing import Any

import yaml

from tune import results
from tune.report import trial_status
from tune.results import DIVERGED, DIVERGED_RULE, DONE, ENDED, EPOCH, Status


def test_key_names_are_distinct_and_match_their_values() -> None:
    keys = {
        name: value
        for name, value in vars(results).items()
        if name.isupper() and isinstance(value, str)
    }
    assert len(set(keys.values())) == len(keys)
    assert results.OBJECTIVE == "objective"
    assert results.EPOCH == "epoch"
    assert results.THRESHOLD_KEYS == ("threshold", "threshold_P", "threshold_R", "threshold_F1")


def test_every_status_trial_status_gives_is_a_plain_string_yaml_can_write() -> None:
    cases: list[tuple[dict[str, Any], Exception | None, Status]] = [
        ({}, RuntimeError("boom"), Status.ERRORED),
        ({EPOCH: 2, DIVERGED: True, DIVERGED_RULE: "spike"}, None, Status.DIVERGED),
        ({EPOCH: 4}, None, Status.COMPLETED),
        ({EPOCH: 2, DONE: True}, None, Status.STOPPED),
        ({EPOCH: 2}, None, Status.UNFINISHED),
    ]
    for metrics, error, want in cases:
        status, _ = trial_status(metrics, error, max_t=4)
        assert status == want
        assert type(status) is str
        assert yaml.safe_load(yaml.safe_dump({"status": status})) == {"status": str(want)}
    assert set(ENDED) == {Status.COMPLETED, Status.STOPPED, Status.DIVERGED}
    assert [str(s) for s in Status] == [
        "completed",
        "stopped by ASHA",
        "diverged",
        "errored",
        "unfinished",
    ]
