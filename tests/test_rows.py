"""Records to rows and back (monitor/store/rows.py): pure, no database."""

import pytest

from monitor.errors import InputError
from monitor.records import AlertEvent, TurnRecord
from monitor.store.rows import from_row, to_row
from monitor.store.schema import TurnRow


def test_turn_row_round_trip_packs_scores_and_capping_bits():
    capped = [False, True, False, False, False, False, False, True, True, False]  # 10 flags: 2 bytes
    rec = TurnRecord("s", 1, "assistant", "a\x00b", 21, [f"t{i}" for i in range(10)], [i - 4.5 for i in range(10)],
                     pre_cap_scores=[i - 9.0 for i in range(10)], capped=capped)
    row = to_row(rec)
    assert len(row["scores"]) == 40 and len(row["capped"]) == 2 and row["n_tokens"] == 10
    assert row["text"] == "a\ufffdb" and row["mean"] == pytest.approx(0.0)
    back = from_row(TurnRow(**row))
    assert back["scores"] == [i - 4.5 for i in range(10)] and back["pre_cap_scores"] == [i - 9.0 for i in range(10)]
    assert back["capped"] == capped


def test_bad_fields_name_the_record_and_the_field():
    with pytest.raises(InputError, match=r"session 's', turn 0.*bad role 'robot'"):
        to_row(TurnRecord("s", 0, "robot", "x", 21))
    with pytest.raises(InputError, match="2 tokens but 1 scores"):
        to_row(TurnRecord("s", 0, "assistant", "x", 21, ["a", "b"], [1.0]))
    with pytest.raises(InputError, match="bad level"):
        to_row(AlertEvent("s", 0, 0, "loud", -20.0, -14.6, event_id="e1"))


def test_a_turn_record_keeps_pre_cap_scores_only_where_capping_acted():
    plain = TurnRecord.build("s", 1, "assistant", "a b", 12, tokens=["a", " b"], scores=[1.0, 2.0],
                             pre_cap_scores=[1.0, 2.0], cap_flags=[False, False], state="watch")
    assert plain.pre_cap_scores is None and plain.capped is None and plain.state == "watch"
    capped = TurnRecord.build("s", 3, "assistant", "c d", 12, tokens=["c", " d"], scores=[5.0, 5.0],
                              pre_cap_scores=[5.0, -9.0], cap_flags=[False, True])
    assert capped.pre_cap_scores == [5.0, -9.0] and capped.capped == [False, True]
    user = TurnRecord.build("s", 2, "user", "hi", 12, source="audit")
    assert (user.tokens, user.scores, user.pre_cap_scores, user.source) == ([], [], None, "audit")
