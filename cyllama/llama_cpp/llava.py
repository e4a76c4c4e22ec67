"""llama-cpp-python's multimodal chat handlers for ``Llama(chat_handler=...)``, on libmtmd.

``MTMDChatHandler(clip_model_path=...)`` works for any model family with a projector: the model's
own chat template renders the conversation and libmtmd places each image where its part was.
``Llava15ChatHandler`` is the same with LLaVA 1.5's prompt format, as llama-cpp-python code
names it. Image parts take ``data:`` URLs and local paths (http URLs are not fetched).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

from .._generation import Generation, run_sequence
from .._media import has_media, media_bytes, split_media
from ..chat_template import ChatTemplate
from ..llama.mtmd.context import MtmdContext

if TYPE_CHECKING:
    from ._llama import Llama

__all__ = ["MTMDChatHandler", "Llava15ChatHandler"]

# LLaVA 1.5's format (llama-cpp-python's Llava15ChatHandler.CHAT_FORMAT, with our marker in place
# of the image URL it writes)
_LLAVA15 = (
    "{% for message in messages %}"
    "{% if message.role == 'system' %}{{ message.content }}\n\n{% endif %}"
    "{% if message.role == 'user' %}USER: {{ message.content }}\n{% endif %}"
    "{% if message.role == 'assistant' %}ASSISTANT: {{ message.content }}</s>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
_DEFAULT_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant "
                   "gives helpful, detailed, and polite answers to the human's questions.")


class MTMDChatHandler:
    """A chat handler that feeds images (and audio) through the model's projector."""

    chat_format: Optional[str] = None  # None: the model's own chat template

    def __init__(self, clip_model_path: str, verbose: bool = True, use_gpu: bool = True, **mtmd_params: Any):
        self.clip_model_path = clip_model_path
        self.verbose = verbose
        self._params = dict(use_gpu=use_gpu, **mtmd_params)
        self._mtmd: Optional[MtmdContext] = None

    def _context(self, llama: "Llama") -> MtmdContext:
        model = llama._require_model() if hasattr(llama, "_require_model") else llama._model
        if self._mtmd is None or self._mtmd.closed or self._mtmd.model is not model:
            self._mtmd = MtmdContext(self.clip_model_path, model, **self._params)
        return self._mtmd

    def _template(self, llama: "Llama") -> ChatTemplate:
        if self.chat_format is not None:
            return ChatTemplate(self.chat_format, bos_token="", eos_token="</s>")
        return ChatTemplate.from_model(llama._model)

    def _messages(self, messages: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        return messages

    def __call__(self, *, llama: "Llama", messages: List[Dict[str, Any]], temperature: float = 0.2,
                 top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05, typical_p: float = 1.0,
                 stream: bool = False, stop: Optional[Any] = None, seed: Optional[int] = None,
                 max_tokens: Optional[int] = None, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 repeat_penalty: float = 1.1, mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                 mirostat_eta: float = 0.1, model: Optional[str] = None, logit_bias: Optional[Dict] = None,
                 **kwargs: Any) -> Any:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        mt = self._context(llama)
        msgs, sources = split_media(self._messages(list(messages)), mt.marker)
        text = self._template(llama).render(msgs, add_generation_prompt=True)
        bitmaps = [mt.bitmap(media_bytes(src, allow_files=True)) for src in sources]
        chunks = mt.tokenize(text, bitmaps, add_special=llama._vocab.add_bos, parse_special=True)
        ctx = llama._require_ctx()
        n_ctx = ctx.n_ctx
        if chunks.n_tokens >= n_ctx:
            n = chunks.n_tokens
            chunks.close()
            raise ValueError(f"Requested tokens ({n}) exceed context window of {n_ctx}")
        limit = n_ctx - chunks.n_tokens
        cfg = llama._sampling_config(top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temperature,
                                     repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                     presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                     mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, logit_bias=logit_bias)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        seed_v = seed if seed is not None else (llama._seed if llama._seed != -1 else -1)
        cfg = cfg.replace(max_tokens=min(max_tokens, limit) if max_tokens and max_tokens > 0 else limit,
                          stop_sequences=stops, seed=int(seed_v) & 0xFFFFFFFF if seed_v != -1 else -1)
        history = chunks.text_tokens()
        gen = Generation.from_config(llama._vocab, cfg, history, n_ctx)
        gen.prompt_tokens = chunks.n_tokens
        llama.reset()  # the drop-in's own token cache does not describe media: start afresh
        head = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()),
                "model": model if model is not None else llama.model_path}

        def run() -> Iterator[Any]:
            try:
                yield from run_sequence(ctx, gen, [], cache=[], media=(mt, chunks))
            finally:
                gen.close()
                chunks.close()
                llama.reset()

        if stream:
            return self._stream(head, run())
        parts, reason = [], "stop"
        for c in run():
            parts.append(c.text)
            reason = c.finish_reason or reason
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                             "logprobs": None, "finish_reason": "length" if reason == "length" else "stop"}],
                "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.generated,
                          "total_tokens": gen.prompt_tokens + gen.generated}}

    @staticmethod
    def _stream(head: Dict[str, Any], chunks: Iterator[Any]) -> Iterator[Dict[str, Any]]:
        def chunk(delta: Dict[str, Any], finish: Optional[str] = None) -> Dict[str, Any]:
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        yield chunk({"role": "assistant"})
        reason = "stop"
        for c in chunks:
            if c.text:
                yield chunk({"content": c.text})
            reason = c.finish_reason or reason
        yield chunk({}, "length" if reason == "length" else "stop")

    @staticmethod
    def uses_media(messages: List[Dict[str, Any]]) -> bool:
        return has_media(messages)


class Llava15ChatHandler(MTMDChatHandler):
    """LLaVA 1.5 (``USER: <image>\\n... ASSISTANT:``), with its default system message."""

    chat_format = _LLAVA15

    def _messages(self, messages: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        if messages and messages[0].get("role") == "system":
            return messages
        return [{"role": "system", "content": _DEFAULT_SYSTEM}, *messages]
