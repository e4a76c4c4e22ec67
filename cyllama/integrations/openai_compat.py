"""An in-process stand-in for the ``openai`` client, answered by a local GGUF model.

::

    from cyllama.integrations.openai_compat import OpenAICompatibleClient

    with OpenAICompatibleClient("model.gguf") as client:
        r = client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=50)
        print(r.choices[0].message.content, r.usage.total_tokens)
        for chunk in client.chat.completions.create(messages=[...], stream=True):
            print(chunk.choices[0].delta.content or "", end="")
        client.completions.create(prompt="Once upon a time", max_tokens=20).choices[0].text
        client.embeddings.create(input=["a", "b"]).data[0].embedding

Requests go through cyllama's one OpenAI layer (the same validation, tools, ``n``, logprobs,
``response_format``, ``stream_options`` and usage as the server), so an unknown field raises
``TypeError`` naming it and a value out of OpenAI's range raises ``ValueError`` naming it.
Responses are the ``openai`` package's own types (``ChatCompletion``, ``ChatCompletionChunk``,
``Completion``, ``CreateEmbeddingResponse``) when it is installed, otherwise light objects with
the same attributes and ``model_dump()`` / ``to_dict()`` / ``to_json()``.

The client serialises requests: safe to share between threads, one generation at a time.
"""

from __future__ import annotations

import json
import os
import weakref
from typing import Any, Iterator, Mapping, Sequence

from .._llm import LLM
from .._openai.schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_request
from .._openai.service import Job, OpenAIService, run_plan

__all__ = ["OpenAICompatibleClient", "Stream", "Record", "service_for"]

_SERVICES: "weakref.WeakKeyDictionary[LLM, OpenAIService]" = weakref.WeakKeyDictionary()


def service_for(llm: LLM, model_id: str | None = None) -> OpenAIService:
    """The OpenAI layer over ``llm`` (one per LLM, shared by the wrappers around it)."""
    svc = _SERVICES.get(llm)
    if svc is None:
        svc = _SERVICES[llm] = _new_service(llm, llm.config, model_id or llm.model_path.name)
    return svc


def _new_service(llm: LLM, base: Any, model_id: str) -> OpenAIService:
    n_ctx = llm.config.n_ctx or llm.model.n_ctx_train or 4096
    return OpenAIService(llm.model, n_ctx=n_ctx, base=base, model_id=model_id, model_ids=(llm.model_path.name,),
                         chat_template=llm._template(), embed=lambda toks: _embed(llm, toks),
                         default_completion_tokens=None, mtmd=llm.mtmd, media_files=True)


def _embed(llm: LLM, token_lists: list[list[int]]) -> Any:
    with llm._guard.hold(blocking=True):
        return llm.embedder().embed_tokens(token_lists)


def run_on(llm: LLM, plan: Any) -> Any:
    """Runs an OpenAI-layer plan on ``llm``, one job after another: a dict, or an iterator of dicts."""
    def run(job: Job) -> Iterator[Any]:
        return llm.run(job.tokens, job.config, job.grammar, wait=True,
                       media=job.media() if job.media is not None else None)

    def generated() -> int:
        st = llm.last_stats
        return st.generated_tokens if st is not None else 0
    return run_plan(plan, run, generated)


class Record:
    """A JSON object with attribute access (what the client returns without the ``openai`` package)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]):
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self._data[name])
        except KeyError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and other._data == self._data

    def __repr__(self) -> str:
        return f"Record({self._data!r})"

    def model_dump(self, *, exclude_none: bool = False, **_: Any) -> dict[str, Any]:
        return _strip(self._data) if exclude_none else json.loads(json.dumps(self._data))

    to_dict = model_dump

    def model_dump_json(self, *, indent: int | None = None, exclude_none: bool = False, **_: Any) -> str:
        return json.dumps(self.model_dump(exclude_none=exclude_none), indent=indent, ensure_ascii=False)

    def to_json(self, *, indent: int | None = 2, exclude_none: bool = False) -> str:
        return self.model_dump_json(indent=indent, exclude_none=exclude_none)


def _wrap(v: Any) -> Any:
    if isinstance(v, dict):
        return Record(v)
    if isinstance(v, list):
        return [_wrap(x) for x in v]
    return v


def _strip(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_strip(x) for x in v]
    return v


def _typed(kind: str) -> Any:
    """The ``openai`` package's type for ``kind`` (None without the package)."""
    try:
        if kind == "chat.completion":
            from openai.types.chat import ChatCompletion as T
        elif kind == "chat.completion.chunk":
            from openai.types.chat import ChatCompletionChunk as T
        elif kind == "text_completion":
            from openai.types import Completion as T
        else:
            from openai.types import CreateEmbeddingResponse as T
    except ImportError:
        return None
    return T


def _as_object(d: dict[str, Any]) -> Any:
    t = _typed(d.get("object", "list"))
    # the openai package's own construct(): nested types built without validation, as the package
    # itself does for responses (a stream chunk has no finish_reason yet, a base64 embedding is a str)
    return t.construct(**d) if t is not None else Record(d)


class Stream:
    """What ``create(stream=True)`` returns: an iterator of chunks; ``close()`` stops generation.

    Nothing is generated until the first chunk is asked for.
    """

    def __init__(self, gen: Iterator[Any]):
        self._gen = gen

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Any:
        return _as_object(next(self._gen))

    def close(self) -> None:
        self._gen.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OpenAICompatibleClient:
    """A drop-in for ``openai.OpenAI()`` that runs a local GGUF model in-process.

    ``temperature`` and ``max_tokens`` are the defaults of every request; ``n_gpu_layers`` and
    ``**llm_kwargs`` (``n_ctx``, ``config``, ``chat_template``, ``verbose``, any
    :class:`~cyllama.GenerationConfig` field) go to :class:`cyllama.LLM`. Pass ``llm=`` to share an
    already loaded :class:`~cyllama.LLM` (it is then not closed by :meth:`close`). ``model_name``
    is what responses report as ``model`` (default: the file name).
    """

    def __init__(self, model_path: str | os.PathLike | None = None, temperature: float = 0.7, max_tokens: int = 512,
                 n_gpu_layers: int = 99, *, llm: LLM | None = None, model_name: str | None = None,
                 **llm_kwargs: Any):
        if llm is None:
            if model_path is None:
                raise TypeError("OpenAICompatibleClient needs model_path (or llm=, an already loaded LLM)")
            llm = LLM(model_path, n_gpu_layers=n_gpu_layers, **llm_kwargs)
            self._owns_llm = True
        else:
            if not isinstance(llm, LLM):
                raise TypeError(f"llm must be a cyllama.LLM, got {type(llm).__name__}")
            if llm_kwargs:
                raise TypeError("model options cannot be given with llm= (the model is already loaded): "
                                + ", ".join(sorted(llm_kwargs)))
            self._owns_llm = False
        self.llm = llm
        try:
            base = llm.config.replace(temperature=temperature, max_tokens=max_tokens)
        except BaseException:
            if self._owns_llm:
                llm.close()
            raise
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.model = model_name or llm.model_path.name
        self.service = _new_service(llm, base, self.model)
        self.chat = _Chat(self)
        self.completions = Completions(self)
        self.embeddings = Embeddings(self)

    def _answer(self, plan: Any) -> Any:
        out = run_on(self.llm, plan)
        return Stream(out) if plan.stream else _as_object(out)

    def close(self) -> None:
        """Frees the model (when this client loaded it). Idempotent."""
        if self._owns_llm:
            self.llm.close()

    def __enter__(self) -> "OpenAICompatibleClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OpenAICompatibleClient model={self.model!r}>"


def _body(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request body of ``create(**kwargs)``: ``extra_body`` merged, the openai client's
    transport options (``extra_headers``, ``timeout``...) dropped, None meaning absent."""
    body = {k: v for k, v in kwargs.items() if v is not None
            and k not in ("extra_headers", "extra_query", "timeout", "extra_body")}
    extra = kwargs.get("extra_body")
    if extra:
        if not isinstance(extra, Mapping):
            raise TypeError("extra_body must be a dict")
        body.update(extra)
    return body


class _Chat:
    def __init__(self, client: OpenAICompatibleClient):
        self.completions = ChatCompletions(client)


class ChatCompletions:
    """``client.chat.completions``."""

    def __init__(self, client: OpenAICompatibleClient):
        self._client = client

    def create(self, messages: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> Any:
        """A chat completion (``stream=True``: a :class:`Stream` of chunks)."""
        if messages is None:
            raise TypeError("create() missing required argument 'messages'")
        body = _body(kwargs)
        body["messages"] = list(messages) if isinstance(messages, (list, tuple)) else messages
        c = self._client
        return c._answer(c.service.chat(parse_request(ChatCompletionRequest, body)))


class Completions:
    """``client.completions`` (the legacy text-completion endpoint)."""

    def __init__(self, client: OpenAICompatibleClient):
        self._client = client

    def create(self, prompt: Any = None, **kwargs: Any) -> Any:
        """Completes ``prompt`` (a string, a list of strings, token ids or lists of token ids)."""
        if prompt is None:
            raise TypeError("create() missing required argument 'prompt'")
        body = _body(kwargs)
        body["prompt"] = prompt
        c = self._client
        return c._answer(c.service.completion(parse_request(CompletionRequest, body)))


class Embeddings:
    """``client.embeddings``: the model's own pooling (mean for generative models), L2-normalised."""

    def __init__(self, client: OpenAICompatibleClient):
        self._client = client

    def create(self, input: Any = None, **kwargs: Any) -> Any:  # noqa: A002
        if input is None:
            raise TypeError("create() missing required argument 'input'")
        body = _body(kwargs)
        body["input"] = input
        return _as_object(self._client.service.embeddings(parse_request(EmbeddingRequest, body)))
