"""What ``LLM.chat`` answers: :class:`ChatReply` (the text, as a ``str``, with the assistant
message and the tool calls), :class:`ChatStream` (``chat(stream=True)``: the text as it comes,
the reply at the end), and :func:`read_tool_calls`, which splits a chat's chunks into content and
calls as they arrive."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ._generation import GenerationChunk

if TYPE_CHECKING:
    from ._tools.formats import ToolCallStream

__all__ = ["ChatReply", "ChatStream", "read_tool_calls"]


class ChatReply(str):
    """The answer to a conversation: its text (a ``str``: it prints, compares and concatenates as
    the text), with what else the model said.

    - ``tool_calls``: the calls the model made, in OpenAI's shape
      (``[{"id", "type": "function", "function": {"name", "arguments"}}]``, arguments a JSON
      string); ``[]`` when it made none.
    - ``finish_reason``: ``"stop"``, ``"length"``, ``"cancelled"``, or ``"tool_calls"`` when it
      ended with complete calls.
    - ``message``: the assistant message, ready to append to the conversation for the next turn
      (content ``None`` and ``tool_calls`` when it called tools).
    """

    tool_calls: list[dict[str, Any]]
    finish_reason: str | None

    def __new__(cls, text: str | None, tool_calls: Sequence[dict[str, Any]] | None = None,
                finish_reason: str | None = None) -> "ChatReply":
        self = super().__new__(cls, text or "")
        self.tool_calls = list(tool_calls or [])
        self.finish_reason = finish_reason
        return self

    @property
    def content(self) -> str | None:
        """The text; ``None`` when the model only called tools (as OpenAI's message has it)."""
        return str(self) if self or not self.tool_calls else None

    @property
    def message(self) -> dict[str, Any]:
        """The assistant message of this reply (a new dict each time)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [{**c, "function": dict(c["function"])} for c in self.tool_calls]
        return msg


class ChatStream:
    """``LLM.chat(..., stream=True)``: iterates over the answer's text as it is generated (in a
    chat with tools, only the content: call markup never appears). Once the iteration has ended,
    :attr:`reply` is the whole :class:`ChatReply` (``tool_calls``, ``finish_reason``, ``message``);
    it is ``None`` before. ``close()`` stops the generation early.
    """

    def __init__(self, chunks: Iterator[GenerationChunk], on_token: Callable[[str], None] | None = None):
        self._chunks = chunks
        self._on_token = on_token
        self._parts: list[str] = []
        self._last: GenerationChunk | None = None
        self.reply: ChatReply | None = None

    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> str:
        for c in self._chunks:
            if c.finish_reason is not None:
                self._last = c
            if c.text:
                self._parts.append(c.text)
                if self._on_token is not None:
                    self._on_token(c.text)
                return c.text
        if self.reply is None:
            last = self._last
            self.reply = ChatReply("".join(self._parts), last.tool_calls if last is not None else None,
                                   last.finish_reason if last is not None else None)
        raise StopIteration

    def close(self) -> None:
        """Stops the generation (if it runs) and frees what it holds."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "ChatStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_tool_calls(chunks: Iterator[GenerationChunk], calls: "ToolCallStream") -> Iterator[GenerationChunk]:
    """The chunks of a chat with tools, their text reduced to the content (text that may start a
    call is held back until it is known not to); the last chunk gets ``tool_calls`` and, when
    they are complete, the finish reason ``"tool_calls"``."""
    for c in chunks:
        events = calls.feed(c.text)
        if c.finish_reason is not None:
            events += calls.finish()
        c.text = "".join(e[1] for e in events if e[0] == "content")
        if c.finish_reason is not None:
            c.tool_calls = calls.message()[1]
            if c.finish_reason == "stop" and calls.complete:
                c.finish_reason = "tool_calls"
        yield c
