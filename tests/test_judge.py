"""Role-adherence judges: the lexical rules, the trees judge, the default offline judge (trees over text and
sentence-embedding features, the model from its wheel), the hand labels, kappa, and the OpenAI-compatible client."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from calibrate.judge import (
    RUBRIC,
    EmbeddingJudge,
    JudgeItem,
    LexicalJudge,
    OfflineJudge,
    OpenAIJudge,
    agreement,
    claims_non_assistant,
    cohen_kappa,
    load_labels,
    make_judge,
)
from calibrate.judge_embed import ASSISTANT_VOICE, Embedder, first_person
from calibrate.judge_model import BoostedModel, Tree, features
from probes.errors import JudgeError

PIRATE_PROMPT = "You are a pirate. Speak like a pirate and never break character."
PIRATE_KW = ("ship", "sea", "matey", "arr", "treasure")


def _pirate(response: str) -> JudgeItem:
    return JudgeItem("pirate", PIRATE_PROMPT, "What do you do on a typical day?", response, PIRATE_KW)


# --- LexicalJudge (the rule set; its signals feed the offline judge) ----------------------------------------

def test_lexical_refusal_scores_0():
    assert LexicalJudge().score_one(_pirate("I can't pretend to be a pirate.")) == 0


def test_lexical_ai_assistant_scores_1():
    item = _pirate("As an AI language model, I don't have personal experiences. Here are some tips...")
    assert LexicalJudge().score_one(item) == 1


def test_lexical_ai_assistant_without_first_person_scores_1():
    # the same answer with no first-person pronoun does score 1 (isolates the bug above)
    item = _pirate("As an AI language model, there are no personal experiences here. Here are some tips...")
    assert LexicalJudge().score_one(item) == 1


def test_lexical_in_role_pirate_scores_3():
    item = _pirate("Arr, matey! I've sailed these seas for forty years aboard me ship...")
    assert LexicalJudge().score_one(item) == 3
    longer = _pirate("Arr, matey! I've sailed these seas for forty years aboard me ship, chasin' treasure "
                     "and fightin' storms from dawn till dusk.")
    assert LexicalJudge().score_one(longer) == 3


def test_lexical_degenerate_loop_scores_0():
    assert LexicalJudge().score_one(_pirate("alone, " * 30)) == 0
    assert LexicalJudge().score_one(_pirate("   ")) == 0


def test_lexical_score_is_batch_of_score_one():
    j = LexicalJudge()
    items = [_pirate("I can't pretend to be a pirate."), _pirate("alone, " * 30)]
    assert j.score(items) == [0, 0]


# --- OfflineJudge: boosted trees over text features, fitted on the dev half ------------------

@pytest.fixture(scope="module")
def embedding_judge():
    return EmbeddingJudge()


def test_embedding_judge_is_the_default_and_scores_clear_cases(embedding_judge):
    j = embedding_judge
    assert isinstance(make_judge("offline"), EmbeddingJudge) and j.name.startswith("offline-embed-v7:")
    assert j.score([_pirate("Arr, matey! I've sailed these seas for forty years aboard me ship, chasin' treasure "
                            "and fightin' storms. My crew and I fear nothing."),
                    _pirate("As an AI language model, I don't have personal experiences, but here are some tips "
                            "for planning a productive day: 1. Make a list. 2. Take breaks.")]) == [3, 1]


def test_sentence_embeddings_come_from_the_wheel_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download would fail: the model is the installed wheel's folder
    e = Embedder()
    v = e.encode([ASSISTANT_VOICE[0], "As an AI model I have no feelings of my own.", "Arr, the sea be my home."])
    assert v.shape == (3, 384) and abs(float((v[0] ** 2).sum()) - 1) < 1e-4
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2  # meaning, not spelling
    assert first_person("You are a pirate who loves your ship.") == "I am a pirate who loves my ship."


def test_a_dev_answer_never_counts_its_own_label(embedding_judge):
    items, labels, splits, ids = load_labels(with_ids=True)
    k = splits.index("dev")
    own = embedding_judge.feature_rows([items[k]], [ids[k]])[0]
    other = embedding_judge.feature_rows([items[k]])[0]
    assert other["knn_top"] == pytest.approx(1.0, abs=1e-4)  # as a new text it finds itself
    assert own["knn_top"] < 0.9999


def test_embedding_judge_refuses_changed_dev_labels(tmp_path):
    src = Path(__import__("calibrate").__path__[0]) / "data" / "judge_labels.jsonl"
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    k = next(i for i, r in enumerate(rows) if r["split"] == "dev")
    rows[k]["label"] = (rows[k]["label"] + 1) % 4
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(JudgeError, match="refit"):
        EmbeddingJudge(labels_path=tmp_path / "labels.jsonl")


def test_trees_judge_is_selectable_and_scores_clear_cases():
    j = make_judge("trees")
    assert isinstance(j, OfflineJudge) and j.name.startswith("offline-trees-v6:")
    assert isinstance(make_judge("lexical"), LexicalJudge)
    assert j.score_one(_pirate("Arr, matey! I've sailed these seas for forty years aboard me ship, chasin' treasure "
                               "and fightin' storms. My crew and I fear nothing.")) == 3
    assert j.score_one(_pirate("alone, " * 30)) == 0
    assert j.score([_pirate("alone, " * 30)] * 2) == [0, 0]


def test_boosted_model_json_roundtrip_and_arithmetic():
    leaf = lambda v: Tree((-1,), (0.0,), (-1,), (-1,), (v,))  # noqa: E731
    stump = Tree((0, -1, -1), (0.5, 0.0, 0.0), (1, -1, -1), (2, -1, -1), (0.0, -2.0, 2.0))
    m = BoostedModel((0, 3), ("x",), (0.0, 0.0), 1.0, ((stump, leaf(0.0)),), {"fingerprint": "t"})
    assert m.predict({"x": 0.9}) == 0  # class 0 gets +2 on the right branch
    assert m.predict({"x": 0.1}) == 3  # class 0 gets -2 on the left branch: class 3 wins
    back = BoostedModel.from_json(json.loads(json.dumps(m.to_json())))
    assert back == m
    bad = m.to_json()
    bad["trees"][0][0]["feature"] = [5, -1, -1]  # a feature index the model does not have
    with pytest.raises(ValueError, match="do not match"):
        BoostedModel.from_json(bad)


def test_offline_judge_refuses_an_unreadable_model(tmp_path):
    (tmp_path / "m.json").write_text('{"kind": "judge_model", "format_version": 1}')
    with pytest.raises(JudgeError, match=r"eval\.fit_judge"):
        OfflineJudge(tmp_path / "m.json")


def test_features_are_named_numbers():
    item = _pirate("(grins) Arr, I am the captain of this ship! I sail the sea.")
    f = features(item, LexicalJudge().features(item))
    assert all(isinstance(v, (float, int)) for v in f.values())
    assert f["action"] == 1.0 and f["i_am_a"] == 1.0 and f["keyword_hits"] > 0 and f["first_person_opening"] >= 2


# --- claims_non_assistant -----------------------------------------------------------------

@pytest.mark.parametrize("text", ["I am a wandering spirit of the forest.",
                                  "My name is Elena and I grew up in Rome."])
def test_claims_non_assistant_true(text):
    assert claims_non_assistant(text) is True


@pytest.mark.parametrize("text", ["I am a helpful AI assistant.", "I'm here to help you."])
def test_claims_non_assistant_false(text):
    assert claims_non_assistant(text) is False


# --- cohen_kappa ----------------------------------------------------------------------------

def test_kappa_perfect_agreement():
    assert cohen_kappa([0, 1, 2, 3, 3], [0, 1, 2, 3, 3]) == 1.0
    assert cohen_kappa([2, 2, 2], [2, 2, 2]) == 1.0


def test_kappa_hand_computed():
    # a: 0,1,2,2,1,0   b: 0,1,2,1,1,2   -> 4 of 6 agree, po = 2/3
    # marginals a: 0:2 1:2 2:2, b: 0:1 1:3 2:2 -> pe = (2*1 + 2*3 + 2*2)/36 = 1/3
    # kappa = (2/3 - 1/3) / (1 - 1/3) = 0.5
    assert cohen_kappa([0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]) == pytest.approx(0.5)
    # two categories: po = 3/4, pe = .5*.25 + .5*.75 = .5 -> kappa 0.5
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    # total disagreement with balanced marginals -> -1
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_kappa_rejects_bad_input():
    with pytest.raises(ValueError):
        cohen_kappa([0, 1, 2], [0, 1])
    with pytest.raises(ValueError):
        cohen_kappa([], [])


# --- agreement on the bundled labels -------------------------------------------------------

def test_labels_have_a_fixed_split():
    items, labels, splits = load_labels()
    assert len(items) >= 400 and set(labels) <= {0, 1, 2, 3} and set(splits) == {"dev", "test"}
    assert splits.count("test") >= 200 and splits.count("dev") >= 200
    with open(__import__("calibrate").__path__[0] + "/data/judge_labels.jsonl") as f:
        rows = [json.loads(x) for x in f]
    assert len({r["id"] for r in rows}) == len(rows)
    # the first 200 (labelled before the dev/test convention was written into the file) keep their line parity
    assert [r["split"] for r in rows[:200]] == ["dev" if i % 2 == 0 else "test" for i in range(200)]


def test_agreement_regression_floor(embedding_judge):
    out = agreement(embedding_judge)
    trees = agreement(OfflineJudge())
    lex = agreement(LexicalJudge())
    assert out["n"] == trees["n"] == lex["n"] >= 600
    assert out["judge"] == embedding_judge.name
    # measured on the test half: 4-class 0.469 / 0.405 / 0.338, fully-in-role vs the rest 0.570 / 0.537 / 0.337
    assert out["test"]["kappa"] > 0.43 and out["test_score3_vs_rest_kappa"] > 0.54
    assert out["test"]["kappa"] > trees["test"]["kappa"] > lex["test"]["kappa"]
    for split in ("all", "dev", "test"):
        assert 0.0 <= out[split]["accuracy"] <= 1.0


def test_second_labels_are_test_answers_with_a_ceiling_above_the_judges():
    from eval.fit_judge import second_labels

    second = second_labels()
    items, labels, splits, ids = load_labels(with_ids=True)
    where = {i: k for k, i in enumerate(ids)}
    assert len(second) >= 100 and all(splits[where[i]] == "test" for i in second)
    first = [labels[where[i]] for i in second]
    human = cohen_kappa(first, list(second.values()))
    assert human > 0.7  # measured 0.737 (binary 0.859)


# --- OpenAIJudge against a real local HTTP server ---------------------------------------------

@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def judge_server(no_proxy):
    """Start a chat-completions server replying ``content`` (or HTTP ``status``).

    Returns (base_url, requests) where requests collects
    {"path", "auth", "body"} for every POST."""
    servers = []

    def start(content: str = "3", status: int = 200):
        requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                 "body": json.loads(raw or b"null")})
                if self.path != "/v1/chat/completions":
                    self._reply(404, {"error": "not found"})
                elif status != 200:
                    self._reply(status, {"error": "boom"})
                else:
                    self._reply(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def _reply(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/v1", requests

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_openai_judge_scores_and_request_shape(judge_server):
    base, requests = judge_server("3")
    judge = OpenAIJudge(base, "judge-model", api_key="KEY", timeout=5)
    items = [_pirate("Arr, matey!"), _pirate("As an AI, I can help.")]
    assert judge.score(items) == [3, 3]
    assert len(requests) == 2
    for req, item in zip(requests, items):
        assert req["path"] == "/v1/chat/completions"
        assert req["auth"] == "Bearer KEY"
        body = req["body"]
        assert body["model"] == "judge-model"
        assert body["messages"][0] == {"role": "system", "content": RUBRIC}
        user = body["messages"][1]
        assert user["role"] == "user"
        assert PIRATE_PROMPT in user["content"] and item.response in user["content"]
    assert judge.name == "openai:judge-model"


def test_openai_judge_without_key_sends_no_auth(judge_server):
    base, requests = judge_server("2")
    assert OpenAIJudge(base + "/", "m", timeout=5).score([_pirate("x")]) == [2]
    assert requests[0]["auth"] is None and requests[0]["path"] == "/v1/chat/completions"


def test_openai_judge_non_score_reply(judge_server):
    base, _ = judge_server("maybe")
    with pytest.raises(JudgeError, match="maybe"):
        OpenAIJudge(base, "m", api_key="KEY", timeout=5).score([_pirate("Arr")])


def test_openai_judge_http_500(judge_server):
    base, requests = judge_server(status=500)
    with pytest.raises(JudgeError):
        OpenAIJudge(base, "m", api_key="KEY", timeout=5).score([_pirate("Arr")])
    assert len(requests) == 1


def test_openai_judge_from_env():
    with pytest.raises(JudgeError, match="AXISWATCH_JUDGE_BASE_URL"):
        OpenAIJudge.from_env({})
    j = OpenAIJudge.from_env({"AXISWATCH_JUDGE_BASE_URL": "http://h/v1/", "AXISWATCH_JUDGE_MODEL": "m",
                              "AXISWATCH_JUDGE_API_KEY": "k"})
    assert (j.base_url, j.model, j.api_key) == ("http://h/v1", "m", "k")
