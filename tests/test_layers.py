"""Tests for probes.layers: layer discovery on tiny random models (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
import transformers as tf

from probes.errors import LayerNotFoundError
from probes.layers import find_layers, layer_path

N_LAYERS = 3
_COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)

CONFIGS: dict[str, tuple[Callable[[], tf.PretrainedConfig], str]] = {
    "llama": (lambda: tf.LlamaConfig(**_COMMON), "model.layers"),
    "mistral": (lambda: tf.MistralConfig(**_COMMON), "model.layers"),
    "qwen2": (lambda: tf.Qwen2Config(**_COMMON), "model.layers"),
    "qwen3": (lambda: tf.Qwen3Config(**_COMMON, head_dim=8), "model.layers"),
    "gemma2": (lambda: tf.Gemma2Config(**_COMMON, head_dim=8), "model.layers"),
    "gemma3_text": (lambda: tf.Gemma3TextConfig(**_COMMON, head_dim=8), "model.layers"),
    "gpt2": (
        lambda: tf.GPT2Config(
            vocab_size=128, n_embd=32, n_layer=N_LAYERS, n_head=4, n_positions=64,
            bos_token_id=0, eos_token_id=0,
        ),
        "transformer.h",
    ),
    "gpt_neox": (
        lambda: tf.GPTNeoXConfig(
            vocab_size=128, hidden_size=32, intermediate_size=64,
            num_hidden_layers=N_LAYERS, num_attention_heads=4,
            max_position_embeddings=64,
        ),
        "gpt_neox.layers",
    ),
    "phi3": (
        lambda: tf.Phi3Config(**_COMMON, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        "model.layers",
    ),
}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = CONFIGS[name][0]()
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    return request.param, _build(request.param)


def test_find_layers_length_and_path(family: tuple[str, torch.nn.Module]) -> None:
    name, model = family
    layers = find_layers(model)
    assert isinstance(layers, torch.nn.ModuleList)
    assert len(layers) == model.config.num_hidden_layers == N_LAYERS
    assert layer_path(model) == CONFIGS[name][1]


@pytest.mark.parametrize("layer", [0, N_LAYERS - 2])
def test_block_output_is_hidden_states_l_plus_1(
    family: tuple[str, torch.nn.Module], layer: int
) -> None:
    _, model = family
    captured: list[torch.Tensor] = []

    def hook(_mod: torch.nn.Module, _inp: object, out: object) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)  # type: ignore[arg-type]

    torch.manual_seed(0)
    ids = torch.randint(0, 128, (2, 7))
    handle = find_layers(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
    finally:
        handle.remove()
    assert len(captured) == 1
    assert len(out.hidden_states) == N_LAYERS + 1
    assert captured[0].shape == out.hidden_states[layer + 1].shape
    assert torch.allclose(captured[0], out.hidden_states[layer + 1], atol=1e-5)


def test_override_works() -> None:
    model = _build("llama")
    assert find_layers(model, override="model.layers") is model.model.layers
    assert layer_path(model, override="model.layers") == "model.layers"


@pytest.mark.parametrize("bad", ["model.nope", "model.embed_tokens", "model"])
def test_bad_override_raises(bad: str) -> None:
    model = _build("llama")
    with pytest.raises(LayerNotFoundError) as exc:
        find_layers(model, override=bad)
    msg = str(exc.value)
    assert bad in msg
    assert "LlamaForCausalLM" in msg
    assert "model.layers" in msg  # offered as a suggestion


class _Weird(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.weird_blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))


def test_unknown_architecture_raises_with_suggestions() -> None:
    model = _Weird()
    with pytest.raises(LayerNotFoundError) as exc:
        find_layers(model)
    msg = str(exc.value)
    assert "_Weird" in msg
    assert "weird_blocks" in msg
    assert "--layers-path" in msg
    assert "AXISWATCH_LAYERS_PATH" in msg
    assert "transformer.h" in msg  # lists the paths tried
    assert find_layers(model, override="weird_blocks") is model.weird_blocks


def test_fallback_uses_config_layer_count() -> None:
    model = _Weird()
    model.config = SimpleNamespace(num_hidden_layers=2)  # type: ignore[assignment]
    model.other = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
    assert find_layers(model) is model.weird_blocks
    assert layer_path(model) == "weird_blocks"
    model.config = SimpleNamespace(num_hidden_layers=5)  # type: ignore[assignment]
    with pytest.raises(LayerNotFoundError, match="weird_blocks"):
        find_layers(model)
