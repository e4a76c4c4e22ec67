"""What the OpenAI-compatible routes do, independent of the web framework.

``ModelService`` owns the model, the continuous-batching engine, an embedder and the counters.
It turns request bodies (already parsed into dicts) into engine submissions and engine output into
OpenAI-shaped JSON. Invalid requests raise :class:`ApiError` carrying an HTTP status and an
OpenAI error body.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Mapping, Sequence

import numpy as np

from ..._config import GenerationConfig
from ..._embedding import Embedder
from ..._engine import Engine, QueueFullError
from ..._generation import GenerationChunk
from ...llama.model import LlamaModel, LlamaModelParams

__all__ = ["ApiError", "ModelService"]

# request fields -> GenerationConfig fields (OpenAI names and llama.cpp extras)
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
             "seed": "seed", "repeat_penalty": "repeat_penalty", "frequency_penalty": "frequency_penalty",
             "presence_penalty": "presence_penalty", "typical_p": "typical_p", "mirostat": "mirostat",
             "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta", "repeat_last_n": "penalty_last_n",
             "dry_multiplier": "dry_multiplier", "xtc_probability": "xtc_probability",
             "xtc_threshold": "xtc_threshold", "top_n_sigma": "top_n_sigma", "ignore_eos": "ignore_eos"}


class ApiError(Exception):
    """An error to send to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(msg: str, param: str | None = None) -> ApiError:
    return ApiError(400, msg, param=param)


class ModelService:
    """A model served to many clients: the engine generates, one embedder embeds."""

    def __init__(self, model_path: str | os.PathLike, *, n_ctx: int = 2048, n_gpu_layers: int = 99,
                 n_parallel: int = 4, n_threads: int | None = None, max_queue: int = 64,
                 model_alias: str | None = None, n_batch: int = 512, chat_template: str | None = None):
        self.model = LlamaModel(model_path, LlamaModelParams(n_gpu_layers=n_gpu_layers))
        self.vocab = self.model.get_vocab()
        self.model_id = model_alias or self.model.path.name
        self.created = int(time.time())
        self.engine = Engine(self.model, n_slots=n_parallel, n_ctx=n_ctx, n_batch=n_batch, max_queue=max_queue,
                             n_threads=n_threads)
        self.n_threads = n_threads
        self._chat_template_source = chat_template
        self._template: Any = None
        self._embedder: Embedder | None = None
        self._embed_lock = threading.Lock()
        self.counters = {"http_requests_total": 0, "http_errors_total": 0, "client_disconnects_total": 0}

    # -- helpers ---------------------------------------------------------------------------
    def template(self) -> Any:
        if self._template is None:
            from ...chat_template import ChatTemplate

            self._template = ChatTemplate.from_model(self.model, source=self._chat_template_source or None)
        return self._template

    def _config(self, body: Mapping[str, Any], default_max: int | None) -> GenerationConfig:
        kw: dict[str, Any] = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}
        for src, dst in _SAMPLING.items():
            v = body.get(src)
            if v is not None:
                kw[dst] = v
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = default_max
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise _bad(f"max_tokens must be a positive integer, got {max_tokens!r}", "max_tokens")
            kw["max_tokens"] = max_tokens
        else:
            kw["max_tokens"] = self.engine.n_ctx_slot
        stop = body.get("stop")
        if stop is not None:
            if isinstance(stop, str):
                stop = [stop]
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
                raise _bad("stop must be a string or a list of up to 16 strings", "stop")
            kw["stop_sequences"] = [s for s in stop if s]
        bias = body.get("logit_bias")
        if bias:
            try:
                kw["logit_bias"] = {int(k): float(v) for k, v in dict(bias).items()}
            except (TypeError, ValueError):
                raise _bad("logit_bias must map token ids to numbers", "logit_bias") from None
        n = body.get("n", 1)
        if n not in (1, None):
            raise _bad("only n=1 is supported", "n")
        try:
            return GenerationConfig(**kw)
        except (ValueError, TypeError) as exc:
            raise _bad(str(exc)) from None

    def _grammar(self, body: Mapping[str, Any]) -> str | None:
        from ... import grammar as g

        if body.get("grammar"):
            if not isinstance(body["grammar"], str):
                raise _bad("grammar must be a GBNF string", "grammar")
            return body["grammar"]
        rf = body.get("response_format")
        if rf is None:
            if body.get("json_schema") is not None:
                rf = {"type": "json_object", "schema": body["json_schema"]}
            else:
                return None
        if not isinstance(rf, Mapping):
            raise _bad("response_format must be an object", "response_format")
        try:
            return g.json_grammar_for_response_format(dict(rf))
        except (ValueError, TypeError, KeyError) as exc:
            raise _bad(f"invalid response_format: {exc}", "response_format") from None

    def _check_tokens(self, tokens: list[int]) -> None:
        if not tokens:
            raise _bad("the prompt is empty", "prompt")
        if len(tokens) >= self.engine.n_ctx_slot:
            raise _bad(f"the prompt has {len(tokens)} tokens but the context holds {self.engine.n_ctx_slot}",
                       "messages")

    def submit(self, tokens: list[int], cfg: GenerationConfig, grammar: str | None, on_chunk: Any) -> Any:
        self._check_tokens(tokens)
        if cfg.max_tokens + len(tokens) > self.engine.n_ctx_slot:
            cfg = cfg.replace(max_tokens=max(1, self.engine.n_ctx_slot - len(tokens)))
        try:
            return self.engine.submit(tokens, cfg, grammar, on_chunk=on_chunk)
        except QueueFullError as exc:
            raise ApiError(503, str(exc), "server_overloaded", code="queue_full") from None
        except ValueError as exc:
            raise _bad(str(exc)) from None

    # -- chat ------------------------------------------------------------------------------
    def prepare_chat(self, body: Mapping[str, Any]) -> tuple[list[int], GenerationConfig, str | None]:
        from ...chat_template import ChatTemplateError

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("messages must be a non-empty list", "messages")
        cfg = self._config(body, None)
        if body.get("logprobs"):
            cfg = cfg.replace(logprobs=True, top_logprobs=int(body.get("top_logprobs") or 0))
        tools = body.get("tools")
        try:
            text = self.template().render(messages, add_generation_prompt=True, tools=tools)
        except ChatTemplateError as exc:
            raise _bad(str(exc), "messages") from None
        # the template drops a BOS it writes itself when the tokenizer adds one (add_bos)
        tokens = self.vocab.tokenize(text, add_special=self.vocab.add_bos, parse_special=True)
        return tokens, cfg, self._grammar(body)

    def prepare_completion(self, body: Mapping[str, Any]) -> tuple[list[list[int]], GenerationConfig, str | None]:
        prompt = body.get("prompt")
        prompts: list[Any]
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            prompts = prompt
        else:
            raise _bad("prompt must be a string, a list of strings, or token ids", "prompt")
        if len(prompts) > self.engine.max_queue:
            raise _bad(f"at most {self.engine.max_queue} prompts per request", "prompt")
        cfg = self._config(body, 16)
        lp = body.get("logprobs")
        if lp is not None and lp is not False:
            if isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= 20:
                raise _bad("logprobs must be an integer in 0..20", "logprobs")
            cfg = cfg.replace(logprobs=True, top_logprobs=lp)
        out = []
        for p in prompts:
            if isinstance(p, str):
                if not p:
                    raise _bad("the prompt is empty", "prompt")
                toks = self.vocab.tokenize(p, add_special=True, parse_special=True)
            else:
                if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                    raise _bad("token prompts must be lists of integers", "prompt")
                try:
                    self.vocab.check_tokens(p)
                except ValueError as exc:
                    raise _bad(str(exc), "prompt") from None
                toks = list(p)
            self._check_tokens(toks)
            out.append(toks)
        return out, cfg, self._grammar(body)

    # -- response shapes -------------------------------------------------------------------
    def piece(self, token: int) -> str:
        return self.vocab.token_to_bytes(token, special=False).decode("utf-8", "replace")

    def chat_logprobs(self, chunks: Sequence[GenerationChunk]) -> dict[str, Any]:
        content = []
        for c in chunks:
            if c.token is None or c.logprob is None:
                continue
            tok = self.piece(c.token)
            top = [{"token": self.piece(t), "logprob": lp, "bytes": list(self.piece(t).encode())}
                   for t, lp in (c.top_logprobs or {}).items()]
            content.append({"token": tok, "logprob": c.logprob, "bytes": list(tok.encode()), "top_logprobs": top})
        return {"content": content}

    def completion_logprobs(self, chunks: Sequence[GenerationChunk], offset0: int = 0) -> dict[str, Any]:
        tokens, lps, tops, offsets = [], [], [], []
        off = offset0
        for c in chunks:
            if c.token is None or c.logprob is None:
                continue
            t = self.piece(c.token)
            tokens.append(t)
            lps.append(c.logprob)
            tops.append({self.piece(k): v for k, v in (c.top_logprobs or {}).items()})
            offsets.append(off)
            off += len(t)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    @staticmethod
    def new_id(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:24]}"

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    # -- embeddings / tokens ---------------------------------------------------------------
    def embed(self, body: Mapping[str, Any]) -> dict[str, Any]:
        inp = body.get("input")
        if isinstance(inp, str):
            items: list[Any] = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(t, int) for t in inp):
            items = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(x, (str, list)) for x in inp):
            items = inp
        else:
            raise _bad("input must be a string, a list of strings, or token ids", "input")
        if len(items) > 2048:
            raise _bad("at most 2048 inputs per request", "input")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise _bad("encoding_format must be 'float' or 'base64'", "encoding_format")
        with self._embed_lock:
            if self._embedder is None:
                self._embedder = Embedder(self.model, "mean", True, n_threads=self.n_threads)
            emb = self._embedder
            toks = []
            for i, x in enumerate(items):
                if isinstance(x, str):
                    t = self.vocab.tokenize(x, add_special=True, parse_special=False) if x else []
                else:
                    t = list(x)
                if not t:
                    raise _bad(f"input {i} is empty", "input")
                toks.append(t)
            try:
                vecs = emb.embed_tokens(toks)
            except ValueError as exc:
                raise _bad(str(exc), "input") from None
        data = []
        for i, v in enumerate(vecs):
            if fmt == "base64":
                import base64

                val: Any = base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()
            else:
                val = [float(x) for x in v]
            data.append({"object": "embedding", "embedding": val, "index": i})
        n = sum(len(t) for t in toks)
        return {"object": "list", "data": data, "model": self.model_id,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    def tokenize(self, body: Mapping[str, Any]) -> dict[str, Any]:
        content = body.get("content")
        if not isinstance(content, str):
            raise _bad("content must be a string", "content")
        toks = self.vocab.tokenize(content, add_special=bool(body.get("add_special", False)),
                                   parse_special=bool(body.get("parse_special", True)))
        if body.get("with_pieces"):
            return {"tokens": [{"id": t, "piece": self.piece(t)} for t in toks]}
        return {"tokens": toks}

    def detokenize(self, body: Mapping[str, Any]) -> dict[str, Any]:
        toks = body.get("tokens")
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise _bad("tokens must be a list of integers", "tokens")
        try:
            self.vocab.check_tokens(toks)
        except ValueError as exc:
            raise _bad(str(exc), "tokens") from None
        return {"content": self.vocab.detokenize(toks) if toks else ""}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": self.created,
                                            "owned_by": "cyllama",
                                            "meta": {"n_ctx": self.engine.n_ctx_slot, "n_params": self.model.n_params,
                                                     "n_vocab": self.vocab.n_vocab}}]}

    def metrics_text(self) -> str:
        m = dict(self.engine.metrics)
        lines = []

        def put(name: str, kind: str, value: float, help_: str) -> None:
            lines.extend([f"# HELP cyllama_{name} {help_}", f"# TYPE cyllama_{name} {kind}", f"cyllama_{name} {value}"])

        put("requests_total", "counter", m["requests_total"], "Generation requests accepted by the engine")
        put("requests_finished_total", "counter", m["requests_finished"], "Generations that finished")
        put("requests_cancelled_total", "counter", m["requests_cancelled"], "Generations cancelled (disconnects)")
        put("requests_failed_total", "counter", m["requests_failed"], "Generations that failed")
        put("prompt_tokens_total", "counter", m["prompt_tokens_total"], "Prompt tokens received")
        put("prompt_tokens_cached_total", "counter", m["cached_prompt_tokens_total"],
            "Prompt tokens reused from the KV cache")
        put("tokens_generated_total", "counter", m["generated_tokens_total"], "Tokens generated")
        put("decode_steps_total", "counter", m["decode_steps_total"], "llama_decode calls by the engine")
        put("slots_busy", "gauge", self.engine.busy_slots, "Slots generating now")
        put("slots_total", "gauge", self.engine.n_slots, "Slots")
        put("queue_length", "gauge", self.engine.queue_length, "Requests waiting for a slot")
        put("http_requests_total", "counter", self.counters["http_requests_total"], "HTTP requests")
        put("http_errors_total", "counter", self.counters["http_errors_total"], "HTTP error responses")
        put("client_disconnects_total", "counter", self.counters["client_disconnects_total"],
            "Clients that went away before their answer was complete")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.engine.close()
        if self._embedder is not None:
            self._embedder.close()
        self.model.close()
