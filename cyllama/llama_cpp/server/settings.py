"""llama-cpp-python's server settings (``llama_cpp/server/settings.py``), mapped onto cyllama's server.

Every name llama-cpp-python's ``python -m llama_cpp.server`` takes is accepted with its default.
Each one either configures cyllama's server (``USED``), has nothing to configure there
(``NO_EFFECT``: the reason is in its help), or is a feature cyllama's server does not have
(``UNSUPPORTED``: only its default is accepted; another value is a :class:`SettingsError` naming
it). Names llama-cpp-python does not have are errors too, except cyllama's own ``n_parallel``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

__all__ = ["Setting", "SETTINGS", "SettingsError", "parse_settings", "server_kwargs", "USED", "NO_EFFECT",
           "UNSUPPORTED"]

USED, NO_EFFECT, UNSUPPORTED = "used", "no effect", "unsupported"


class SettingsError(ValueError):
    """A setting that is unknown, has a bad value, or asks for what the server cannot do."""


def _bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    s = str(text).strip().lower()
    if s in ("1", "on", "t", "true", "y", "yes"):
        return True
    if s in ("0", "off", "f", "false", "n", "no"):
        return False
    raise ValueError(f"Invalid boolean argument: {text}")


def _json_object(text: Any) -> Dict[str, Any]:
    value = json.loads(text) if isinstance(text, str) else text
    if not isinstance(value, dict):
        raise ValueError(f"Invalid JSON object argument: {text}")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    effect: str
    help: str
    many: bool = False  # a list (``--tensor_split 0.5 0.5``)


_CPUS = os.cpu_count() or 1
_S = Setting
#: llama-cpp-python 0.3.36's ModelSettings and ServerSettings, in its order, plus ``n_parallel``.
SETTINGS: Dict[str, Setting] = {s.name: s for s in [
    _S("model", str, None, USED, "The path to the model to use for generating completions (or, with "
       "--hf_model_repo_id, a file name or glob in that repository)."),
    _S("model_alias", str, None, USED, "The model id the server answers to (default: the file name)."),
    _S("n_gpu_layers", int, 0, USED, "The number of layers to put on the GPU; -1 for all."),
    _S("split_mode", int, 1, UNSUPPORTED, "The split mode to use (the default only)."),
    _S("main_gpu", int, 0, UNSUPPORTED, "Main GPU to use (the default only)."),
    _S("tensor_split", float, None, UNSUPPORTED, "Split layers across GPUs (not supported).", many=True),
    _S("vocab_only", _bool, False, UNSUPPORTED, "Load only the vocabulary (a server needs weights)."),
    _S("use_mmap", _bool, True, NO_EFFECT, "Use mmap (cyllama always maps the model when it can)."),
    _S("use_mlock", _bool, False, UNSUPPORTED, "Use mlock (not supported)."),
    _S("kv_overrides", str, None, UNSUPPORTED, "Model metadata overrides (not supported by the server).", many=True),
    _S("rpc_servers", str, None, UNSUPPORTED, "RPC servers for offloading (not supported by the server)."),
    _S("seed", int, 0xFFFFFFFF, NO_EFFECT, "Random seed: requests carry their own `seed`."),
    _S("n_ctx", int, 2048, USED, "The context size of each request (0: the model's training context)."),
    _S("n_batch", int, 512, USED, "The batch size to use per eval."),
    _S("n_ubatch", int, 512, NO_EFFECT, "The physical batch size (cyllama uses min(n_batch, 512))."),
    _S("n_threads", int, max(_CPUS // 2, 1), USED, "The number of threads to use; -1 for all CPUs."),
    _S("n_threads_batch", int, _CPUS, NO_EFFECT, "Threads for batch processing (cyllama uses n_threads)."),
    _S("rope_scaling_type", int, -1, UNSUPPORTED, "RoPE scaling type (the model's only)."),
    _S("rope_freq_base", float, 0.0, UNSUPPORTED, "RoPE base frequency (the model's only)."),
    _S("rope_freq_scale", float, 0.0, UNSUPPORTED, "RoPE frequency scaling factor (the model's only)."),
    _S("yarn_ext_factor", float, -1.0, UNSUPPORTED, "YaRN extrapolation mix factor (the model's only)."),
    _S("yarn_attn_factor", float, 1.0, UNSUPPORTED, "YaRN magnitude scaling factor (the model's only)."),
    _S("yarn_beta_fast", float, 32.0, UNSUPPORTED, "YaRN low correction dim (the model's only)."),
    _S("yarn_beta_slow", float, 1.0, UNSUPPORTED, "YaRN high correction dim (the model's only)."),
    _S("yarn_orig_ctx", int, 0, UNSUPPORTED, "YaRN original context size (the model's only)."),
    _S("mul_mat_q", _bool, True, NO_EFFECT, "Experimental mul_mat_q kernels (gone from llama.cpp)."),
    _S("logits_all", _bool, True, NO_EFFECT, "Return logits for every token (logprobs work without it)."),
    _S("embedding", _bool, False, NO_EFFECT, "Serve embeddings (/v1/embeddings is always served)."),
    _S("offload_kqv", _bool, True, NO_EFFECT, "Offload the KV cache to the GPU (llama.cpp's default)."),
    _S("flash_attn", _bool, False, NO_EFFECT, "Flash attention (llama.cpp chooses it automatically)."),
    _S("last_n_tokens_size", int, 64, NO_EFFECT, "Tokens for the repeat penalty: requests set "
       "`repeat_last_n`."),
    _S("lora_base", str, None, UNSUPPORTED, "Base model for a LoRA (not supported by the server)."),
    _S("lora_path", str, None, UNSUPPORTED, "A LoRA to apply (not supported by the server)."),
    _S("numa", _bool, False, UNSUPPORTED, "NUMA support (not supported by the server)."),
    _S("chat_format", str, None, USED, "Chat format: one of cyllama's built-in templates (chatml, llama-2, "
       "llama-3, mistral-instruct, gemma, qwen, phi-3, zephyr, vicuna, alpaca, openchat; "
       "chatml-function-calling is chatml, whose tool calls the server handles); default: the model's own."),
    _S("chat_template_kwargs", _json_object, None, UNSUPPORTED, "Template keyword arguments at load time: "
       "requests carry `chat_template_kwargs`."),
    _S("clip_model_path", str, None, USED, "A multimodal projector (mmproj GGUF) for image input."),
    _S("cache", _bool, False, NO_EFFECT, "Prompt cache: the server always reuses cached prompt prefixes."),
    _S("cache_type", str, "ram", NO_EFFECT, "Prompt cache type (see cache)."),
    _S("cache_size", int, 2 << 30, NO_EFFECT, "Prompt cache size (see cache)."),
    _S("hf_tokenizer_config_path", str, None, UNSUPPORTED, "A tokenizer_config.json (not supported by the "
       "server: use chat_format or the model's template)."),
    _S("hf_pretrained_model_name_or_path", str, None, UNSUPPORTED, "A transformers tokenizer (not supported)."),
    _S("hf_model_repo_id", str, None, USED, "A Hugging Face repository to take --model from."),
    _S("draft_model", str, None, USED, "Speculative decoding: prompt-lookup-decoding."),
    _S("draft_model_num_pred_tokens", int, 10, USED, "Tokens to draft per step."),
    _S("type_k", int, None, UNSUPPORTED, "K cache quantization (not supported by the server)."),
    _S("type_v", int, None, UNSUPPORTED, "V cache quantization (not supported by the server)."),
    _S("verbose", _bool, True, USED, "Print llama.cpp's log and uvicorn's request log."),
    _S("host", str, "localhost", USED, "Listen address."),
    _S("port", int, 8000, USED, "Listen port."),
    _S("ssl_keyfile", str, None, USED, "SSL key file for HTTPS."),
    _S("ssl_certfile", str, None, USED, "SSL certificate file for HTTPS."),
    _S("api_key", str, None, USED, "API key: every request must send it (Authorization: Bearer ...)."),
    _S("interrupt_requests", _bool, True, NO_EFFECT, "Requests run side by side (continuous batching)."),
    _S("disable_ping_events", _bool, False, NO_EFFECT, "The server sends no ping events."),
    _S("root_path", str, "", USED, "The root path, behind a reverse proxy."),
    _S("n_parallel", int, 1, USED, "cyllama: requests decoded side by side (each with n_ctx)."),
]}
del _S


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cyllama.llama_cpp.server",
                                description="llama-cpp-python's server command line, served by cyllama.")
    for s in SETTINGS.values():
        default = "" if s.default is None else f" (default: {s.default})"
        note = "" if s.effect == USED else f" [{s.effect} in cyllama]"
        p.add_argument(f"--{s.name}", dest=s.name, type=s.parse, nargs="*" if s.many else None,
                       help=f"{s.help}{default}{note}")
    p.add_argument("--config_file", type=str, help="A JSON (or YAML) file of settings, with one model in "
                   "`models`.")
    return p


def _check(values: Dict[str, Any], where: str) -> Dict[str, Any]:
    out = {}
    for name, value in values.items():
        s = SETTINGS.get(name)
        if s is None:
            raise SettingsError(f"unknown setting {name!r} in {where} (llama-cpp-python's server settings: "
                                f"{', '.join(SETTINGS)})")
        try:
            out[name] = [s.parse(v) for v in value] if s.many and isinstance(value, list) else s.parse(value)
        except (TypeError, ValueError) as e:
            raise SettingsError(f"bad value for {name!r} in {where}: {e}") from None
    return out


def _config_file(path: str) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"Config file {path} not found!")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SettingsError("a YAML config file needs PyYAML (pip install pyyaml); JSON needs nothing") from None
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the config file must hold an object of settings")
    models = data.pop("models", [])
    if not isinstance(models, list) or len(models) > 1:
        raise SettingsError(f"{path}: cyllama's server serves one model; `models` must list at most one")
    values = _check(data, path)
    if models:
        if not isinstance(models[0], dict):
            raise SettingsError(f"{path}: `models` must hold an object of model settings")
        values.update(_check(models[0], f"{path} (models[0])"))
    return values


def parse_settings(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """All settings (defaults filled in) from the command line, or a ``--config_file`` (also named
    by ``CONFIG_FILE``); ``MODEL``, ``HOST`` and ``PORT`` from the environment, as llama-cpp-python
    reads them. Raises :class:`SettingsError`; argparse exits on malformed arguments."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise SettingsError(f"unknown setting(s) {' '.join(unknown)} (llama-cpp-python's server settings: "
                            f"{', '.join('--' + n for n in SETTINGS)})")
    config = os.environ.get("CONFIG_FILE", args.config_file)
    given = _config_file(config) if config else {k: v for k, v in vars(args).items()
                                                 if v is not None and k != "config_file"}
    if "model" not in given and os.environ.get("MODEL"):
        given["model"] = os.environ["MODEL"]
    for env in ("HOST", "PORT"):  # these override, as in llama-cpp-python's __main__
        if os.environ.get(env):
            given[env.lower()] = _check({env.lower(): os.environ[env]}, f"${env}")[env.lower()]
    values = {name: s.default for name, s in SETTINGS.items()}
    values.update(given)
    if not values["model"]:
        raise SettingsError("--model is required (a GGUF file, or a file in --hf_model_repo_id)")
    for name, value in values.items():
        s = SETTINGS[name]
        if s.effect == UNSUPPORTED and value != s.default:
            raise SettingsError(f"--{name} {value!r}: {s.help}")
    return values


def server_kwargs(values: Dict[str, Any]) -> Dict[str, Any]:
    """Keyword arguments of :class:`cyllama.server._service.ModelService` for the settings."""
    from ...chat_template import KNOWN_TEMPLATES

    fmt = values["chat_format"]
    if fmt == "chatml-function-calling":
        fmt = "chatml"
    if fmt is not None and fmt not in KNOWN_TEMPLATES:
        raise SettingsError(f"--chat_format {fmt!r} is not available in cyllama's server (its chat formats: "
                            f"{', '.join(sorted(KNOWN_TEMPLATES))}; without --chat_format the model's own template, "
                            "with tool calling, is used)")
    draft = values["draft_model"]
    if draft not in (None, "prompt-lookup-decoding"):
        raise SettingsError(f"--draft_model {draft!r}: the one method is prompt-lookup-decoding")
    for name in ("n_ctx", "n_batch", "n_parallel", "draft_model_num_pred_tokens"):
        if values[name] < (0 if name == "n_ctx" else 1):
            raise SettingsError(f"--{name} must be {'>= 0' if name == 'n_ctx' else '>= 1'}, got {values[name]}")
    threads = values["n_threads"]
    return {
        "n_ctx": values["n_ctx"], "n_gpu_layers": 999 if values["n_gpu_layers"] < 0 else values["n_gpu_layers"],
        "n_parallel": values["n_parallel"], "n_threads": _CPUS if threads == -1 else threads,
        "n_batch": values["n_batch"], "model_alias": values["model_alias"],
        "chat_template": KNOWN_TEMPLATES[fmt] if fmt is not None else None,
        "lookup": values["draft_model_num_pred_tokens"] if draft else 0, "mmproj": values["clip_model_path"],
    }


def model_path(values: Dict[str, Any]) -> str:
    """The model file: ``model`` itself, or fetched from ``hf_model_repo_id`` (the Hugging Face
    cache first, as ``Llama.from_pretrained`` finds it)."""
    if values["hf_model_repo_id"]:
        from .._pretrained import resolve_pretrained

        return str(resolve_pretrained(values["hf_model_repo_id"], values["model"]))
    return values["model"]

