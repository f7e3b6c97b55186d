"""The result contract: statuses are plain strings where files and YAML need them, and the key
names are distinct."""

import yaml

from tune import results
from tune.report import trial_status
from tune.results import ENDED, Status


def test_key_names_are_distinct_and_match_their_values():
    keys = {
        name: value
        for name, value in vars(results).items()
        if name.isupper() and isinstance(value, str)
    }
    assert len(set(keys.values())) == len(keys)
    assert results.OBJECTIVE == "objective"
    assert results.EPOCH == "epoch"
    assert results.THRESHOLD_KEYS == ("threshold", "threshold_P", "threshold_R", "threshold_F1")


def test_every_status_trial_status_gives_is_a_plain_string_yaml_can_write():
    cases = [
        ({}, RuntimeError("boom"), Status.ERRORED),
        ({"epoch": 2, "diverged": True, "diverged_rule": "spike"}, None, Status.DIVERGED),
        ({"epoch": 4}, None, Status.COMPLETED),
        ({"epoch": 2, "done": True}, None, Status.STOPPED),
        ({"epoch": 2}, None, Status.UNFINISHED),
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
