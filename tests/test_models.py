"""Model loading and chat formatting: loading the bundled default model (its GGUF, the cache) on the real
thing; the chat template, which the tests' tiny random Llama shares, on the tiny model."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from probes.errors import InputError, ModelLoadError
from probes.models import (
    DEFAULT_CACHE_NAME,
    default_gguf_path,
    format_chat,
    load_model,
    normalise_messages,
    template_default_system,
)


def test_default_model_loads_from_the_wheel(lm):
    assert default_gguf_path().is_file()
    assert lm.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (lm.n_layers, lm.hidden_size, lm.layers_path) == (30, 576, "model.layers")
    assert lm.tokenizer.padding_side == "left"


def test_cached_load_is_identical(lm, tmp_path):
    """The cache written by the first load reloads to the same weights (timings: bench/bench_load.py)."""
    again = load_model("default")
    assert again.source == "cache"
    a, b = lm.model.state_dict(), again.model.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.smollm
def test_first_load_dequantises_and_caches(tmp_path):
    fresh = load_model("default", cache_dir=tmp_path)
    assert fresh.source == "gguf"
    assert (tmp_path / "models" / DEFAULT_CACHE_NAME / "model.safetensors").is_file()
    assert load_model("default", cache_dir=tmp_path).source == "cache"


@pytest.mark.smollm
def test_two_first_loads_at_once_both_succeed(tmp_path):
    """Replicas started together on a fresh machine each dequantise; both load and one folder remains."""
    code = "import sys; from probes.models import load_model; print(load_model('default', cache_dir=sys.argv[1]).source)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert {out.strip() for out, _ in outs} <= {"gguf", "cache"}
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [DEFAULT_CACHE_NAME]
    assert load_model("default", cache_dir=tmp_path).source == "cache"


@pytest.mark.parametrize("spec", ["tiny_model_dir", pytest.param("default", marks=pytest.mark.smollm)])
def test_bfloat16(request, spec):
    m = load_model("default" if spec == "default" else str(request.getfixturevalue(spec)), dtype="bfloat16")
    assert next(m.model.parameters()).dtype == torch.bfloat16


def test_bad_specs_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(tmp_path))  # an empty folder
    with pytest.raises(InputError, match="unknown dtype"):
        load_model("default", dtype="int3")
    with pytest.raises(InputError, match="unknown device"):
        load_model("default", device="tpu")


def test_chat_template_with_system(tiny_lm):
    text = format_chat(tiny_lm.tokenizer, [{"role": "system", "content": "You are a ghost."}, {"role": "user", "content": "Hi"}])
    assert "<|im_start|>system\nYou are a ghost.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_system_folded_into_first_user_message_without_system_role(tiny_lm):
    """Templates that reject a system role (Gemma 2) get the system text prepended to the first user turn."""
    tok = tiny_lm.tokenizer
    saved = tok.chat_template
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<turn>{{ m['role'] }}\n{{ m['content'] }}</turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<turn>assistant\n{% endif %}")
    try:
        msgs = normalise_messages(tok, [{"role": "system", "content": "Be a cat."}, {"role": "user", "content": "Hello"}])
        assert msgs == [{"role": "user", "content": "Be a cat.\n\nHello"}]
        assert "<turn>user\nBe a cat.\n\nHello</turn>" in format_chat(tok, [{"role": "system", "content": "Be a cat."},
                                                                            {"role": "user", "content": "Hello"}])
    finally:
        tok.chat_template = saved


def test_template_rejection_is_a_clear_error(tiny_lm):
    tok = tiny_lm.tokenizer
    saved = tok.chat_template
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    try:
        with pytest.raises(InputError, match="roles must alternate"):
            format_chat(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    finally:
        tok.chat_template = saved


def test_bad_messages(tiny_lm):
    with pytest.raises(InputError, match="unknown role"):
        normalise_messages(tiny_lm.tokenizer, [{"role": "wizard", "content": "x"}])
    with pytest.raises(InputError, match="content must be a string"):
        normalise_messages(tiny_lm.tokenizer, [{"role": "user", "content": 3}])


def test_local_folder_and_gguf_path_specs(lm):
    from probes.cache import cache_dir

    folder = load_model(str(cache_dir() / "models" / DEFAULT_CACHE_NAME))
    assert folder.source == "folder" and folder.n_layers == 30
    gguf = load_model(str(default_gguf_path()))
    assert gguf.source == "gguf" and gguf.hidden_size == 576
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(gguf.model(input_ids=ids).logits, lm.model(input_ids=ids).logits, atol=1e-4)


def test_the_templates_own_system_prompt_is_found(tiny_lm):
    """SmolLM2's template puts in a system prompt of its own when the messages carry none."""
    found = template_default_system(tiny_lm.tokenizer)
    assert found == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    user = [{"role": "user", "content": "Hi"}]
    assert format_chat(tiny_lm.tokenizer, [{"role": "system", "content": found}, *user]) == format_chat(tiny_lm.tokenizer, user)
    plain = copy.deepcopy(tiny_lm.tokenizer)  # a template that adds nothing of its own
    plain.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                           "{% endfor %}")
    assert template_default_system(plain) is None


def test_the_cache_folder_is_resolved_in_one_place(tmp_path, monkeypatch):
    """The model cache and the run files of database-server deployments live under the same folder: the
    settings' value, else AXISWATCH_CACHE_DIR, else ~/.cache/axiswatch."""
    from pathlib import Path

    from monitor import runfile
    from probes.cache import cache_dir

    monkeypatch.delenv("AXISWATCH_CACHE_DIR", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "axiswatch"
    monkeypatch.setenv("AXISWATCH_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env" and cache_dir(tmp_path / "set") == tmp_path / "set"
    url = "postgresql://db.example:5432/axw"
    assert runfile.path_for(url).parent == tmp_path / "env" / "run"
    assert runfile.path_for(url, str(tmp_path / "set")).parent == tmp_path / "set" / "run"
