"""Locate the decoder-layer list of a Hugging Face causal LM.

Convention: "layer L" everywhere in axiswatch means the output of decoder
block L (0-based), which equals ``hidden_states[L + 1]`` of a forward pass
with ``output_hidden_states=True`` (``hidden_states[0]`` is the embedding
output).

In the style of repeng's ``model_layer_list``: known attribute paths are tried
in order; as a last resort the unique largest ``ModuleList`` whose length
matches ``config.num_hidden_layers`` (or ``n_layer``) is used.
"""

from __future__ import annotations

import torch

from probes.errors import LayerNotFoundError

KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma 2, Phi-3, Gemma 3 text
    "model.language_model.layers",  # Gemma 3 multimodal wrappers
    "language_model.model.layers",  # older multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Falcon-style
    "gpt_neox.layers",  # GPT-NeoX / Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)

_MAX_SUGGESTIONS = 5


def _resolve(model: torch.nn.Module, path: str) -> object | None:
    obj: object = model
    for part in path.split("."):
        if not part:
            return None
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return None
    return obj


def _is_layer_list(obj: object) -> bool:
    return isinstance(obj, torch.nn.ModuleList) and len(obj) > 0


def _candidates(model: torch.nn.Module) -> list[tuple[str, torch.nn.ModuleList]]:
    return [(n, m) for n, m in model.named_modules() if n and _is_layer_list(m)]


def _config_num_layers(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    for cfg in (config, getattr(config, "text_config", None)):
        for attr in ("num_hidden_layers", "n_layer"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def _fail(model: torch.nn.Module, tried: list[str], reason: str) -> LayerNotFoundError:
    suggestions = [name for name, _ in _candidates(model)][:_MAX_SUGGESTIONS]
    hint = ", ".join(f'"{s}"' for s in suggestions) if suggestions else "none found"
    return LayerNotFoundError(
        f"could not find the decoder layers of {type(model).__name__}: {reason}; "
        f"paths tried: {', '.join(tried)}. Fix: pass layers=\"<dotted.path>\", "
        f"the CLI option --layers-path, or environment AXISWATCH_LAYERS_PATH. "
        f"Candidate ModuleList paths in this model: {hint}"
    )


def _locate(model: torch.nn.Module, override: str | None) -> tuple[str, torch.nn.ModuleList]:
    if override is not None:
        obj = _resolve(model, override)
        if not _is_layer_list(obj):
            what = "missing" if obj is None else f"a {type(obj).__name__}"
            raise _fail(
                model, [override],
                f'override "{override}" is {what}, not a non-empty ModuleList',
            )
        return override, obj  # type: ignore[return-value]

    for path in KNOWN_LAYER_PATHS:
        obj = _resolve(model, path)
        if _is_layer_list(obj):
            return path, obj  # type: ignore[return-value]

    tried = list(KNOWN_LAYER_PATHS)
    n_layers = _config_num_layers(model)
    if n_layers is not None:
        tried.append(f"<largest ModuleList of length {n_layers}>")
        matches = [(n, m) for n, m in _candidates(model) if len(m) == n_layers]
        sizes = [sum(p.numel() for p in m.parameters()) for _, m in matches]
        if matches and sizes.count(max(sizes)) == 1:
            return matches[sizes.index(max(sizes))]
        reason = f"no unique largest ModuleList of length {n_layers}"
    else:
        reason = "no known path matched and the model has no layer count in its config"
    raise _fail(model, tried, reason)


def find_layers(
    model: torch.nn.Module, override: str | None = None
) -> torch.nn.ModuleList:
    """Return the decoder-block ``ModuleList`` of ``model``.

    ``override`` is a dotted attribute path relative to ``model`` (e.g.
    ``"model.layers"``). Raises :class:`LayerNotFoundError` on failure.
    """
    return _locate(model, override)[1]


def layer_path(model: torch.nn.Module, override: str | None = None) -> str:
    """Return the dotted path that :func:`find_layers` uses for ``model``."""
    return _locate(model, override)[0]
