"""The capability suite (calibrate/capability.py, calibrate/data/capability.json): graders and data, no model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from calibrate.capability import CATEGORIES, grade, grade_accept, grade_arithmetic, load_tasks, mentions_number, numbers
from probes.errors import InputError

DATA = Path(__file__).resolve().parent.parent / "calibrate" / "data"


def test_suite_size_and_categories():
    tasks = load_tasks()
    counts = Counter(t["category"] for t in tasks)
    assert len(tasks) >= 300 and set(counts) == set(CATEGORIES)
    assert all(n >= 40 for n in counts.values()), counts


def test_suite_is_held_out_from_the_axis_data():
    """No capability prompt is a question or role prompt used to compute the axis or to calibrate capping."""
    tasks = load_tasks()
    q = json.loads((DATA / "questions.json").read_text())
    used = {x.strip().lower() for k in ("extraction", "heldout", "identity") for x in q[k]}
    roles = json.loads((DATA / "roles.json").read_text())["roles"]
    used |= {p.strip().lower() for r in roles for p in r["prompts"]}
    personas = json.loads((DATA / "heldout_personas.json").read_text())["personas"]
    used |= {x.strip().lower() for p in personas for x in [p["prompt"], *p["questions"]]}
    assert not [t["id"] for t in tasks if t["prompt"].strip().lower() in used]


def test_every_ifeval_task_builds_its_checkers(tmp_path):
    """Every shipped IFEval task builds its checkers and grades; a task whose instruction id the
    checkers do not know (it could never pass) is refused when the suite loads."""
    tasks = load_tasks()
    for t in tasks:
        if t["category"] == "ifeval":
            assert isinstance(grade(t, "a reply"), bool), t["id"]
    bad = dict(next(t for t in tasks if t["category"] == "ifeval"), id="typo", instruction_id_list=["case:lowercase"],
               kwargs=[{}])
    (tmp_path / "tasks.json").write_text(json.dumps({"tasks": [bad]}))
    with pytest.raises(InputError, match=r"unknown IFEval instruction ids \['case:lowercase'\]"):
        load_tasks(tmp_path / "tasks.json")


def test_ifeval_grading_uses_the_maintained_checkers():
    task = {"id": "x", "category": "ifeval", "prompt": "Write about cats in lowercase, no commas.",
            "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]}
    assert grade(task, "cats sleep a lot and purr when happy")
    assert not grade(task, "Cats sleep a lot and purr when happy")  # a capital letter
    assert not grade(task, "cats sleep, a lot")  # a comma
    words = {"id": "w", "category": "ifeval", "prompt": "p", "instruction_id_list": ["length_constraints:number_words"],
             "kwargs": [{"relation": "less than", "num_words": 5}]}
    assert grade(words, "one two three") and not grade(words, "one two three four five six")


@pytest.mark.parametrize("text, answer, ok", [("7 muffins cost 21 dollars.", 21, True), ("It costs $1,200.", 1200, True),
                                              ("21 is wrong; it is 24", 21, False), ("no number", 3, False)])
def test_arithmetic_takes_the_final_number(text, answer, ok):
    assert grade_arithmetic(text, answer) is ok


def test_numbers_and_lenient_mentions():
    assert numbers("3.5 and -2, $1,000.25") == [3.5, -2.0, 1000.25]
    assert mentions_number("27 left from 45", 27) and not mentions_number("72 left", 27)


@pytest.mark.parametrize("text, accept, ok", [("The capital is Paris.", ["Paris"], True), ("parisian food", ["Paris"], False),
                                              ("It is -18.0 degrees", ["0"], False), ("Four legs.", ["4", "four"], True),
                                              ("It has 4 legs", ["4"], True)])
def test_accept_lists_match_whole_words_and_numbers(text, accept, ok):
    assert grade_accept(text, accept) is ok


@pytest.mark.parametrize("check, good, bad", [
    ({"type": "contains_all", "items": ["THE DOG RUNS"]}, "THE DOG RUNS FAST", "The dog runs fast"),
    ({"type": "contains_all_ci", "items": ["blue", "red"]}, "Red and BLUE", "red only"),
    ({"type": "contains_none_ci", "items": ["very"], "also": {"type": "contains_all_ci", "items": ["happy"]}},
     "I am happy.", "I am very happy."),
    ({"type": "sorted_list", "items": ["apple", "banana", "cherry"]}, "apple, banana, cherry", "banana, apple, cherry"),
    ({"type": "exact_ci", "text": "Hello world"}, '"hello world."', "hello world again"),
])
def test_rewrite_checks(check, good, bad):
    task = {"id": "r", "category": "rewrite", "prompt": "p", "check": check}
    assert grade(task, good) is True
    assert grade(task, bad) is False


def test_bad_tasks_fail_with_a_clear_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"tasks": [{"id": "a", "category": "arithmetic", "prompt": "1+1?"}]}))
    with pytest.raises(InputError, match="lacks answer"):
        load_tasks(path)
    path.write_text(json.dumps({"tasks": [{"id": "a", "category": "poetry", "prompt": "p"}]}))
    with pytest.raises(InputError, match="category"):
        load_tasks(path)
    with pytest.raises(InputError, match="unknown rewrite check"):
        grade({"id": "r", "category": "rewrite", "prompt": "p", "check": {"type": "nope"}}, "x")


def test_extraction_fails_an_answer_that_names_a_distractor():
    task = {"id": "e", "category": "extraction", "prompt": "p", "accept": ["Monday"], "distractors": ["Friday"]}
    assert grade(task, "Monday.") and not grade(task, "She went on Monday and on Friday.")


def test_ifeval_case_checks_are_deterministic():
    task = {"id": "c", "category": "ifeval", "prompt": "p", "instruction_id_list": ["change_case:english_capital"],
            "kwargs": [{}]}
    text = "THE SUN RISES IN THE EAST AND SETS IN THE WEST EVERY DAY."
    assert len({grade(task, text) for _ in range(20)}) == 1
