"""A model served to many clients: the continuous-batching engine generates, one embedder embeds,
and the one OpenAI layer (:mod:`cyllama._openai`) turns requests into engine jobs and chunks into
OpenAI JSON. Independent of the web framework."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Mapping, Sequence

from .._config import model_sampling_defaults
from .._embedding import Embedder
from .._engine import Engine, EngineRequest, EngineStoppedError, QueueFullError
from .._generation import GenerationChunk
from .._openai.schema import InvalidRequestError
from .._openai.service import Job, OpenAIService, server_defaults
from ..llama.model import LlamaModel, LlamaModelParams

__all__ = ["ApiError", "ModelService"]

ApiError = InvalidRequestError  # an error to send as {"error": {...}} with its HTTP status


class ModelService:
    """The engine, the embedder and the OpenAI layer for one model."""

    def __init__(self, model_path: str | os.PathLike, *, n_ctx: int = 2048, n_gpu_layers: int = 99,
                 n_parallel: int = 4, n_threads: int | None = None, max_queue: int = 64,
                 model_alias: str | None = None, n_batch: int = 512, chat_template: str | None = None,
                 lookup: int = 0, mmproj: str | os.PathLike | None = None, allow_image_urls: bool = False,
                 draft_model: str | os.PathLike | None = None, draft_max: int = 16,
                 whisper_model: str | os.PathLike | None = None,
                 rpc_servers: str | Sequence[str] | None = None, tensor_split: Sequence[float] | None = None,
                 queue_timeout: float | None = None):
        # queue_timeout: seconds a request may wait for a slot before it gets 503 (None: no limit)
        # rpc_servers: the model's layers on llama.cpp rpc-servers (the draft model stays local)
        self.model = LlamaModel(model_path, LlamaModelParams(n_gpu_layers=n_gpu_layers, rpc_servers=rpc_servers,
                                                             tensor_split=tensor_split))
        self.mtmd = None
        self.draft_model: LlamaModel | None = None
        try:
            if draft_model is not None:
                from .._speculative import SpeculativeParams

                self.draft_model = LlamaModel(draft_model, LlamaModelParams(n_gpu_layers=n_gpu_layers))
                spec = SpeculativeParams(n_draft=draft_max)
            self.vocab = self.model.get_vocab()
            if mmproj is not None:
                from ..llama.mtmd.context import MtmdContext

                self.mtmd = MtmdContext(mmproj, self.model, use_gpu=n_gpu_layers != 0, n_threads=n_threads)
            self.engine = Engine(self.model, n_slots=n_parallel, n_ctx=n_ctx, n_batch=n_batch, max_queue=max_queue,
                                 n_threads=n_threads, lookup=lookup, mtmd=self.mtmd, draft_model=self.draft_model,
                                 speculative=spec if draft_model is not None else None, queue_timeout=queue_timeout)
        except BaseException:
            if self.draft_model is not None:
                self.draft_model.close()
            self.model.close()
            raise
        self.model_id = model_alias or self.model.path.name
        self.n_threads = n_threads
        self._embedder: Embedder | None = None
        self._embed_lock = threading.Lock()
        self.openai = OpenAIService(
            self.model, n_ctx=self.engine.n_ctx_slot,
            base=server_defaults(self.engine.n_ctx_slot).replace(**model_sampling_defaults(self.model)),
            model_id=self.model_id, model_ids=(self.model.path.name, self.model.path.stem, str(self.model.path)),
            strict_model=True, chat_template=chat_template, embed=self._embed, mtmd=self.mtmd,
            media_urls=allow_image_urls)
        self.counters = {"http_requests_total": 0, "http_errors_total": 0, "client_disconnects_total": 0}
        # speech to text for /v1/audio/*: up to min(2, n_parallel) transcriptions at once, each on a
        # decoding state of its own over the one loaded model
        self.whisper = None
        self._whisper_idle: list[Any] = []
        self._whisper_made = 0
        self._whisper_max = max(1, min(2, n_parallel))
        self._whisper_cond = threading.Condition()
        if whisper_model is not None:
            from ..whisper import WhisperContext

            try:
                self.whisper = WhisperContext(whisper_model, use_gpu=n_gpu_layers != 0)
            except BaseException:
                self.close()
                raise

    def _embed(self, token_lists: list[list[int]]) -> Any:
        with self._embed_lock:
            if self._embedder is None:
                self._embedder = Embedder(self.model, None, True, n_threads=self.n_threads)
            return self._embedder.embed_tokens(token_lists)

    def submit(self, job: Job, on_chunk: Callable[[GenerationChunk], None],
               on_start: Callable[[], None] | None = None) -> EngineRequest:
        """Queues a job (chunks to ``on_chunk``, ``on_start`` when it gets a slot, both on the
        engine thread); a full queue or a stopped engine is a 503."""
        try:
            return self.engine.submit(job.tokens, job.config, job.grammar, on_chunk=on_chunk,
                                      media=job.media() if job.media is not None else None, on_start=on_start)
        except QueueFullError as exc:
            raise ApiError(str(exc), None, 503, "queue_full", "server_overloaded",
                           headers={"Retry-After": "1"}) from None
        except EngineStoppedError as exc:
            raise ApiError(f"the server cannot generate: {exc}", None, 503, "engine_stopped", "server_error") from None
        except ValueError as exc:
            raise ApiError(str(exc)) from None

    # -- llama.cpp's token routes ----------------------------------------------------------
    def piece(self, token: int) -> str:
        return self.openai.piece(token)

    def tokenize(self, body: Mapping[str, Any]) -> dict[str, Any]:
        content = body.get("content")
        if not isinstance(content, str):
            raise ApiError("content must be a string", "content")
        toks = self.vocab.tokenize(content, add_special=bool(body.get("add_special", False)),
                                   parse_special=bool(body.get("parse_special", True)))
        if body.get("with_pieces"):
            return {"tokens": [{"id": t, "piece": self.piece(t)} for t in toks]}
        return {"tokens": toks}

    def detokenize(self, body: Mapping[str, Any]) -> dict[str, Any]:
        toks = body.get("tokens")
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise ApiError("tokens must be a list of integers", "tokens")
        try:
            self.vocab.check_tokens(toks)
        except (ValueError, TypeError) as exc:  # out of the vocabulary; too large for an int
            raise ApiError(str(exc), "tokens") from None
        return {"content": self.vocab.detokenize(toks) if toks else ""}

    def metrics_text(self) -> str:
        m = dict(self.engine.metrics)
        lines = []

        def put(name: str, kind: str, value: float, help_: str) -> None:
            lines.extend([f"# HELP cyllama_{name} {help_}", f"# TYPE cyllama_{name} {kind}", f"cyllama_{name} {value}"])

        put("requests_total", "counter", m["requests_total"], "Generation requests accepted by the engine")
        put("requests_finished_total", "counter", m["requests_finished"], "Generations that finished")
        put("requests_cancelled_total", "counter", m["requests_cancelled"], "Generations cancelled (disconnects)")
        put("requests_failed_total", "counter", m["requests_failed"], "Generations that failed")
        put("requests_timed_out_total", "counter", m["requests_timed_out"],
            "Requests that waited longer than the queue timeout for a slot (503)")
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

    def transcribe(self, audio: bytes, *, translate: bool = False, language: str | None = None,
                   prompt: str | None = None, temperature: float | None = None, response_format: str = "json",
                   words: bool = False) -> tuple[str, Any]:
        """OpenAI's audio transcription/translation: (media type, body) for ``response_format``."""
        from ..whisper import WhisperParams

        if self.whisper is None:
            raise ApiError("this server has no speech model: start it with --whisper-model PATH", "model", 404,
                           "model_not_found")
        if response_format not in ("json", "text", "srt", "vtt", "verbose_json"):
            raise ApiError("response_format must be json, text, srt, vtt or verbose_json", "response_format")
        try:
            params = WhisperParams(language=language or ("en" if translate else "auto"), translate=translate)
            if prompt:
                params.initial_prompt = prompt
            if temperature is not None:
                params.temperature = float(temperature)
            state = self._take_whisper_state()
            try:
                result = state.transcribe(audio, params, word_timestamps=words)
            finally:
                with self._whisper_cond:
                    self._whisper_idle.append(state)
                    self._whisper_cond.notify()
        except (ValueError, TypeError) as exc:
            raise ApiError(str(exc), "file") from None
        if response_format == "text":
            return "text/plain", result.text + "\n"
        if response_format in ("srt", "vtt"):
            return "text/plain", result.write(response_format)
        if response_format == "json":
            return "application/json", {"text": result.text}
        return "application/json", {
            "task": "translate" if translate else "transcribe", "language": result.language,
            "duration": result.duration, "text": result.text,
            "segments": [{"id": i, "seek": 0, "start": sg.start, "end": sg.end, "text": sg.text, "tokens": sg.tokens,
                          "temperature": params.temperature, "avg_logprob": sg.avg_logprob, "compression_ratio": 0.0,
                          "no_speech_prob": sg.no_speech_prob} for i, sg in enumerate(result.segments)],
            **({"words": [{"word": w.word, "start": w.start, "end": w.end}
                          for sg in result.segments for w in sg.words or []]} if words else {})}

    def _take_whisper_state(self) -> Any:
        """An idle whisper state: the context itself first, then new states up to the limit; waits
        for one when all are busy."""
        with self._whisper_cond:
            while True:
                if self._whisper_idle:
                    return self._whisper_idle.pop()
                if self._whisper_made < self._whisper_max:
                    self._whisper_made += 1
                    return self.whisper if self._whisper_made == 1 else self.whisper.new_state()
                self._whisper_cond.wait()

    def close(self) -> None:
        if getattr(self, "whisper", None) is not None:
            self.whisper.close()
        self.engine.close()
        if self._embedder is not None:
            self._embedder.close()
        if self.draft_model is not None:
            self.draft_model.close()
        self.model.close()
