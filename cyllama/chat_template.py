"""Chat templates: turn a conversation into a prompt with a model's own Jinja template.

A GGUF file carries its chat template as Jinja source in ``tokenizer.chat_template``. That source
comes with the model, so it is untrusted input: :class:`ChatTemplate` renders it in Jinja's
``ImmutableSandboxedEnvironment`` with the settings Hugging Face transformers (and
llama-cpp-python) use (``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols`` extension) and the
helpers real templates call:

- ``raise_exception(msg)`` raises :class:`ChatTemplateError` with the template's message;
- ``strftime_now(fmt)`` formats the current local time;
- the ``tojson`` filter has transformers' semantics (``ensure_ascii=False``, ``indent``,
  ``separators``, ``sort_keys``; no HTML escaping);
- ``{% generation %}...{% endgeneration %}`` (transformers' training-mask block) renders its body.

Anything that goes wrong (a syntax error, an undefined value, ``raise_exception``, an attempt to
reach Python internals such as ``''.__class__.__mro__``, a mutation of the inputs) raises
:class:`ChatTemplateError` naming the template and, where Jinja knows it, the line.

Resource use is bounded in practice rather than by a hard timeout: ``range()`` is limited to
:data:`MAX_RANGE` items by the sandbox; repetition (``*``), concatenation (``+``, ``~``),
powers, ``%``/``format`` widths, padding and ``replace``/``join`` are checked before they build a
value longer than :data:`MAX_VALUE_CHARS`; the output is limited to :data:`MAX_OUTPUT_CHARS`; and
every attribute access, call, operator and output chunk checks a soft deadline of
:data:`MAX_RENDER_SECONDS`. (Jinja runs in-process: a template built to exhaust resources in ways
no hook sees can still be slow; run truly hostile templates in a subprocess.)

Example::

    from cyllama import LlamaModel
    from cyllama.chat_template import ChatTemplate, get_template

    tmpl = ChatTemplate.from_model(LlamaModel("model.gguf"))
    prompt = tmpl.render([{"role": "user", "content": "Hi"}])   # ends with the assistant header
    get_template("llama-3").render([{"role": "user", "content": "Hi"}])

BOS handling: many templates begin with ``{{ bos_token }}``, while llama.cpp's tokenizer also adds
BOS when the vocabulary asks for it. Like llama.cpp's server, a template made with
``add_bos=True`` (what :meth:`ChatTemplate.from_model` sets when the model's tokenizer adds BOS)
drops a leading BOS from the rendered text, so ``vocab.tokenize(prompt, add_special=True,
parse_special=True)`` yields exactly one. Templates made directly default to ``add_bos=False``
and render exactly what the template writes, as transformers does.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import string
import time
import types
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment, SecurityError

if TYPE_CHECKING:
    from .llama.model import LlamaModel

__all__ = [
    "ChatTemplate",
    "ChatTemplateError",
    "KNOWN_TEMPLATES",
    "get_template",
    "detect_format",
    "MAX_RANGE",
    "MAX_VALUE_CHARS",
    "MAX_OUTPUT_CHARS",
    "MAX_RENDER_SECONDS",
]

#: No string built inside a template by repetition, concatenation, formatting, padding,
#: ``replace`` or ``join`` may be longer than this (lists: :data:`MAX_ITEMS` items).
MAX_VALUE_CHARS = 16 * 1024 * 1024
#: The longest list a template may build by repetition.
MAX_ITEMS = 1_000_000
#: The longest rendered prompt.
MAX_OUTPUT_CHARS = 64 * 1024 * 1024
#: Soft deadline of one render, checked at every attribute access, call, operator and output chunk.
MAX_RENDER_SECONDS = 10.0
# Largest exponent result (in bits) a template may compute with ``**``.
_MAX_POW_BITS = 1 << 20


class ChatTemplateError(ValueError):
    """A chat template could not be compiled or rendered, or the messages given to it are invalid."""


class _TemplateRaised(jinja2.TemplateError):
    """Raised by ``raise_exception()`` inside a template."""


class _ResourceLimitError(SecurityError):
    """A resource guard of the sandbox tripped."""


# -- per-render state -----------------------------------------------------------------------
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("cyllama_chat_deadline", default=None)


def _tick() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise _ResourceLimitError(f"rendering took longer than {MAX_RENDER_SECONDS:g} s (MAX_RENDER_SECONDS)")


def _limit(n: int, what: str, limit: int = MAX_VALUE_CHARS) -> None:
    if n > limit:
        raise _ResourceLimitError(f"{what} would be {n} long, over the sandbox limit of {limit}")


def _size(value: Any) -> int:
    """Length of the text ``value`` becomes when rendered (strings directly, others via str())."""
    if isinstance(value, str):
        return len(value)
    try:
        return len(str(value))
    except Exception:
        return 0


def _check_result(value: Any) -> Any:
    if isinstance(value, str):
        _limit(len(value), "a string")
    elif isinstance(value, (list, tuple)):
        _limit(len(value), "a list", MAX_ITEMS)
    return value


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_width(width: Any, what: str) -> None:
    if _is_int(width):
        _limit(width, what)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_percent_format(fmt: str, args: Any) -> None:
    """``fmt % args``: widths and the estimated result size."""
    specs = _PERCENT_SPEC.findall(fmt)
    if isinstance(args, Mapping):
        values = list(args.values())
    elif isinstance(args, tuple):
        values = list(args)
    else:
        values = [args]
    widest = 0
    for width, precision in specs:
        for w in (width, precision):
            if w == "*":
                for v in values:
                    _check_width(v, "a '%' width")
                widest = max([widest] + [v for v in values if _is_int(v)])
            elif w:
                _limit(int(w), "a '%' width")
                widest = max(widest, int(w))
    longest = max((_size(v) for v in values), default=0)
    _limit(len(fmt) + len(specs) * (longest + widest), "a '%'-formatted string")


def _check_brace_format(fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """``fmt.format(*args, **kwargs)``: widths and the estimated result size."""
    values = list(args) + list(kwargs.values())
    widest = 0
    fields = 0
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format will raise the same error
    for _literal, field, spec, _conv in parsed:
        if field is None:
            continue
        fields += 1
        if spec:
            if "{" in spec:
                for v in values:
                    _check_width(v, "a format width")
                widest = max([widest] + [v for v in values if _is_int(v)])
            for digits in re.findall(r"\d+", spec):
                _limit(int(digits), "a format width")
                widest = max(widest, int(digits))
    longest = max((_size(v) for v in values), default=0)
    _limit(len(fmt) + fields * (longest + widest), "a formatted string")


def _replace_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    old, new = str(old), str(new)
    n = len(s) + 1 if old == "" else s.count(old)
    if _is_int(count) and count >= 0:
        n = min(n, count)
    return len(s) + n * (len(new) - len(old))


def _join_size(sep: str, items: Sequence[Any]) -> int:
    return sum(_size(x) for x in items) + len(sep) * max(len(items) - 1, 0)


# -- guards for str methods called from templates ---------------------------------------------
def _guard_str_method(s: str, name: str, args: tuple, kwargs: dict) -> tuple:
    """Checks a call of ``s.<name>(*args)`` before it runs; may return replacement args."""
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_width(args[0] if args else kwargs.get("width"), f"str.{name} width")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if _is_int(size):
            _limit(len(s) + s.count("\t") * max(size, 0), "str.expandtabs result")
    elif name == "replace" and len(args) >= 2:
        _limit(_replace_size(s, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1)),
               "str.replace result")
    elif name == "join" and args:
        items = list(args[0])
        _limit(_join_size(s, items), "str.join result")
        args = (items,) + args[1:]
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((_size(v) for v in args[0].values() if v is not None), default=1)
        _limit(len(s) * max(longest, 1), "str.translate result")
    return args


# -- guards for filters ------------------------------------------------------------------------
def _pre_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
    _check_width(width, "center width")


def _pre_indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    s = str(value)
    w = width if _is_int(width) else len(width) if isinstance(width, str) else 0
    _limit(len(s) + (s.count("\n") + 1) * max(w, 0), "indent result")


def _pre_batch(value: Any, linecount: Any = 1, fill_with: Any = None, *_: Any, **kw: Any) -> None:
    if fill_with is not None or kw.get("fill_with") is not None:
        _check_width(linecount, "batch size")


def _pre_replace(value: Any, old: Any = "", new: Any = "", count: Any = None, *_: Any, **__: Any) -> None:
    _limit(_replace_size(str(value), old, new, -1 if count is None else count), "replace result")


def _pre_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_percent_format(str(value), kwargs or args)


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _pre_center,
    "indent": _pre_indent,
    "batch": _pre_batch,
    "replace": _pre_replace,
    "format": _pre_format,
}


def _guard_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    offset = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0
    check = _FILTER_CHECKS.get(name)

    if name == "join":
        def join_wrapper(*args: Any, **kwargs: Any) -> Any:
            _tick()
            head, rest = args[:offset], list(args[offset:])
            if rest:
                rest[0] = list(rest[0])
                sep = rest[1] if len(rest) > 1 else kwargs.get("d", "")
                attribute = rest[2] if len(rest) > 2 else kwargs.get("attribute")
                if attribute is None:
                    _limit(_join_size(str(sep), rest[0]), "join result")
            return _check_result(f(*head, *rest, **kwargs))

        return functools.wraps(f)(join_wrapper)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if check is not None and len(args) > offset:
            check(*args[offset:], **kwargs)
        return _check_result(f(*args, **kwargs))

    return functools.wraps(f)(wrapper)


# -- template helpers --------------------------------------------------------------------------
def _raise_exception(message: Any = "") -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    if not isinstance(fmt, str):
        raise TypeError("strftime_now() takes a format string")
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' ``tojson``: plain ``json.dumps`` (no HTML escaping), with its options."""
    if _is_int(indent):
        _limit(indent, "tojson indent", 4096)
    elif isinstance(indent, str):
        _limit(len(indent), "tojson indent", 4096)
    if separators is not None:
        separators = tuple(separators)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class _GenerationExtension(Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask block): renders the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _TickingIterable:
    """Wraps what a ``{% for %}`` loop iterates over so that long loops check the deadline."""

    __slots__ = ("_iterable",)

    def __init__(self, iterable: Any):
        self._iterable = iterable

    def __len__(self) -> int:  # lets loop.length work without consuming the iterable
        return len(self._iterable)

    def __iter__(self) -> Any:
        for i, item in enumerate(self._iterable):
            if not i & 1023:
                _tick()
            yield item


class _GuardedCodeGenerator(CodeGenerator):
    """Routes ``~`` (string concatenation) and the iterable of every ``for`` loop through the
    environment, so that sizes and the deadline can be checked there."""

    def visit_For(self, node: nodes.For, frame: Any) -> None:
        node.iter = nodes.Call(nodes.EnvironmentAttribute("guarded_iter", lineno=node.lineno), [node.iter], [],
                               None, None, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.guarded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "*": lambda a, b: a * b,
    "**": lambda a, b: a**b,
    "%": lambda a, b: a % b,
}


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, stricter: unsafe attributes raise at once, and sizes and time are checked."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset(_BINOPS)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # The stock sandbox returns an Undefined that only fails when used; ``{{ x.__class__ }}``
        # would then render as an empty string. A template that reaches for internals is hostile.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and _is_int(n):
                    _limit(len(seq) * n, "a repeated string" if isinstance(seq, str) else "a repeated list",
                           MAX_VALUE_CHARS if isinstance(seq, str) else MAX_ITEMS)
        elif operator == "+":
            if isinstance(left, str) and isinstance(right, str):
                _limit(len(left) + len(right), "a concatenated string")
            elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
                _limit(len(left) + len(right), "a concatenated list", MAX_ITEMS)
        elif operator == "**":
            if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
                _limit(abs(left).bit_length() * right, "an integer power (bits)", _MAX_POW_BITS)
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left, right)
        return _BINOPS[operator](left, right)

    def guarded_iter(self, iterable: Any) -> Any:
        return iterable if isinstance(iterable, jinja2.Undefined) else _TickingIterable(iterable)

    def guarded_concat(self, parts: Iterable[Any]) -> str:
        _tick()
        strs = [p if isinstance(p, str) else str(p) for p in parts]
        _limit(sum(len(s) for s in strs), "a '~'-concatenated string")
        return "".join(strs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            _tick()
            if is_map and len(args) == 1 and isinstance(args[0], Mapping):
                _check_brace_format(fmt, (), args[0])
            else:
                _check_brace_format(fmt, args, kwargs)
            return _check_result(wrapped(*args, **kwargs))

        return functools.update_wrapper(checked, wrapped)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        if isinstance(__obj, types.BuiltinMethodType) and isinstance(getattr(__obj, "__self__", None), str):
            args = _guard_str_method(__obj.__self__, __obj.__name__, args, kwargs)
        return _check_result(super().call(__context, __obj, *args, **kwargs))


@functools.lru_cache(maxsize=1)
def _environment() -> _ChatSandbox:
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True,
                       extensions=["jinja2.ext.loopcontrols", _GenerationExtension])
    env.filters["tojson"] = _tojson
    for name, f in list(env.filters.items()):
        env.filters[name] = _guard_filter(name, f)
    env.globals.pop("lipsum", None)  # lipsum(n) has no size bound and no template needs it
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception was raised on (Jinja rewrites tracebacks to point at it)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# -- message validation ------------------------------------------------------------------------
def _flatten_parts(parts: Sequence[Any], where: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            raise ChatTemplateError(f"{where}: content part {j} must be a dict like "
                                    f"{{'type': 'text', 'text': ...}}, got {type(part).__name__}")
        kind = part.get("type", "text")
        if kind != "text":
            raise ChatTemplateError(f"{where}: content part {j} has type {kind!r}; only 'text' parts can be "
                                    "rendered into a text prompt")
        text = part.get("text")
        if not isinstance(text, str):
            raise ChatTemplateError(f"{where}: content part {j} needs a string 'text'")
        texts.append(text)
    # llama.cpp's server joins the text parts of one message with newlines, too.
    return "\n".join(texts)


def _normalize_tool_call(call: Any, where: str, object_arguments: bool = True) -> dict:
    if not isinstance(call, Mapping):
        raise ChatTemplateError(f"{where} must be a dict, got {type(call).__name__}")
    call = dict(call)
    fn = call.get("function")
    if fn is not None:
        if not isinstance(fn, Mapping):
            raise ChatTemplateError(f"{where}: 'function' must be a dict")
        fn = dict(fn)
        args = fn.get("arguments")
        if not object_arguments:  # the template concatenates the arguments' JSON text (Functionary)
            if not isinstance(args, str):
                fn["arguments"] = json.dumps(args if args is not None else {}, ensure_ascii=False)
        elif isinstance(args, str):
            # OpenAI sends arguments as a JSON string; templates (Qwen, Llama 3.x, Hermes, ...)
            # expect an object and would otherwise render it JSON-encoded twice.
            try:
                parsed = json.loads(args)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                fn["arguments"] = parsed
        call["function"] = fn
    return call


def _normalize_messages(messages: Any, object_arguments: bool = True) -> list[dict]:
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ChatTemplateError("messages must not be empty")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise ChatTemplateError(f"message {i} must be a dict with 'role' and 'content', got {type(msg).__name__}")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise ChatTemplateError(f"message {i} needs a non-empty string 'role'")
        where = f"message {i} ({role})"
        m = dict(msg)
        tool_calls = m.get("tool_calls")
        if tool_calls is not None:
            if not isinstance(tool_calls, (list, tuple)):
                raise ChatTemplateError(f"{where}: 'tool_calls' must be a list")
            m["tool_calls"] = [_normalize_tool_call(c, f"{where}: tool call {j}", object_arguments)
                               for j, c in enumerate(tool_calls)]
        if "content" not in m:
            if role == "assistant" and tool_calls:
                m["content"] = None
            else:
                raise ChatTemplateError(f"{where} has no 'content'")
        content = m["content"]
        if content is None:
            if role != "assistant":
                raise ChatTemplateError(f"{where}: content may only be None for an assistant message")
        elif isinstance(content, (list, tuple)):
            m["content"] = _flatten_parts(content, where)
        elif not isinstance(content, str):
            raise ChatTemplateError(f"{where}: content must be a string, a list of text parts or None, "
                                    f"got {type(content).__name__}")
        for key in ("name", "tool_call_id"):
            if key in m and m[key] is not None and not isinstance(m[key], str):
                raise ChatTemplateError(f"{where}: {key!r} must be a string")
        out.append(m)
    return out


def _normalize_tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)) or not all(isinstance(t, Mapping) for t in tools):
        raise ChatTemplateError("tools must be a list of dicts (OpenAI-style tool/function schemas)")
    return [dict(t) for t in tools]


# -- the template ------------------------------------------------------------------------------
class ChatTemplate:
    """A compiled, sandboxed chat template.

    ``source`` is the Jinja text (``tokenizer.chat_template``); ``bos_token``/``eos_token`` are the
    texts the template sees as ``bos_token``/``eos_token``. With ``add_bos``/``add_eos`` (the
    tokenizer adds those tokens itself) a leading BOS / trailing EOS the template writes is dropped
    from the result, as llama.cpp's server does. Compiling raises :class:`ChatTemplateError` on a
    syntax error. Instances are immutable and thread-safe.
    """

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", name: str | None = None,
                 add_bos: bool = False, add_eos: bool = False):
        if not isinstance(source, str):
            raise TypeError(f"a chat template is Jinja source text, got {type(source).__name__}")
        for label, tok in (("bos_token", bos_token), ("eos_token", eos_token)):
            if not isinstance(tok, str):
                raise TypeError(f"{label} must be a string")
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"{self._label}: syntax error on line {exc.lineno}: {exc.message}") from None
        except Exception as exc:  # anything else the compiler trips on
            raise ChatTemplateError(f"{self._label} could not be compiled: {type(exc).__name__}: {exc}") from exc

    @property
    def _label(self) -> str:
        return f"chat template {self.name!r}" if self.name else "chat template"

    @property
    def format(self) -> str | None:
        """The template family :func:`detect_format` sees in the source (for logs), or None."""
        return detect_format(self.source)

    @classmethod
    def from_model(cls, model: "LlamaModel", name: str | None = None, *,
                   source: str | None = None) -> "ChatTemplate":
        """The model's own template (``tokenizer.chat_template``, or ``tokenizer.chat_template.<name>``).

        BOS/EOS are the texts of the model's special tokens, and ``add_bos``/``add_eos`` follow the
        vocabulary. A model without a (default) template gets ChatML; asking for a named template
        the model does not have raises ValueError. ``source`` overrides the template text (a
        user's ``chat_template=``) while keeping the model's special tokens.
        """
        label = model.meta_val_str("general.name") or getattr(getattr(model, "path", None), "stem", None)
        if source is not None:
            vocab = model.get_vocab()
            return cls(source, bos_token=_token_text(vocab, vocab.bos), eos_token=_token_text(vocab, vocab.eos),
                       name=f"{label} (custom template)" if label else None, add_bos=vocab.add_bos,
                       add_eos=vocab.add_eos)
        source = model.chat_template(name)
        if source is None:
            if name is not None:
                raise ValueError(f"the model has no chat template named {name!r}")
            source = KNOWN_TEMPLATES["chatml"]
            label = f"{label} (no template in the model: chatml)" if label else "chatml"
        elif name is not None:
            label = f"{label}:{name}" if label else name
        vocab = model.get_vocab()
        return cls(source, bos_token=_token_text(vocab, vocab.bos), eos_token=_token_text(vocab, vocab.eos),
                   name=label, add_bos=vocab.add_bos, add_eos=vocab.add_eos)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None, **extra_context: Any) -> str:
        """Renders a conversation into prompt text.

        ``messages``: dicts with ``role`` (system/user/assistant/tool, or whatever the template
        knows) and ``content`` (a string; None for an assistant message that only carries
        ``tool_calls``; or OpenAI's list of ``{"type": "text", "text": ...}`` parts, joined with
        newlines), optionally ``tool_calls`` (OpenAI form; string ``arguments`` holding a JSON
        object are parsed into a dict, as templates expect), ``name`` and ``tool_call_id``.
        ``tools``: OpenAI-style tool schemas, passed to the template as ``tools``.
        ``extra_context``: more template variables (``date_string``, ``enable_thinking``, ...;
        ``bos_token``/``eos_token`` override the template's).

        Raises :class:`ChatTemplateError` on invalid messages and on any template failure.
        """
        context: dict[str, Any] = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        context.update(extra_context)
        has_calls = isinstance(messages, (list, tuple)) and any(
            isinstance(m, Mapping) and m.get("tool_calls") for m in messages)
        context["messages"] = _normalize_messages(messages, not has_calls or self.object_arguments)
        context["tools"] = _normalize_tools(tools)
        context["add_generation_prompt"] = bool(add_generation_prompt)
        text = self._run(context)
        bos, eos = context["bos_token"], context["eos_token"]
        if self.add_bos and isinstance(bos, str) and bos and text.startswith(bos):
            text = text[len(bos):]
        if self.add_eos and isinstance(eos, str) and eos and text.endswith(eos):
            text = text[: -len(eos)]
        return text

    @functools.cached_property
    def object_arguments(self) -> bool:
        """Whether the template takes a tool call's ``arguments`` as an object (most: they apply
        ``tojson``) rather than as its JSON text (Functionary's concatenate it)."""
        call = {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
        msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
        for as_object in (True, False):
            try:
                self._run({"bos_token": self.bos_token, "eos_token": self.eos_token, "tools": None,
                           "messages": _normalize_messages(msgs, as_object), "add_generation_prompt": False})
                return as_object
            except Exception:
                continue
        return True

    def _run(self, context: dict[str, Any]) -> str:
        token = _DEADLINE.set(time.monotonic() + MAX_RENDER_SECONDS)
        try:
            parts: list[str] = []
            total = 0
            for chunk in self._template.generate(context):
                total += len(chunk)
                if total > MAX_OUTPUT_CHARS:
                    raise _ResourceLimitError(f"the output is longer than MAX_OUTPUT_CHARS ({MAX_OUTPUT_CHARS})")
                _tick()
                parts.append(chunk)
            return "".join(parts)
        except _TemplateRaised as exc:
            raise ChatTemplateError(f"{self._label} raised an error: {exc.message}") from None
        except RecursionError:
            raise ChatTemplateError(f"{self._label} recursed too deeply") from None
        except Exception as exc:
            line = _template_line(exc)
            where = f" on line {line}" if line else ""
            kind = "was stopped by the sandbox" if isinstance(exc, SecurityError) else "failed"
            msg = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
            raise ChatTemplateError(f"{self._label} {kind}{where}: {type(exc).__name__.lstrip('_')}: {msg}") from exc
        finally:
            _DEADLINE.reset(token)

    __call__ = render

    def __repr__(self) -> str:
        fmt = self.format
        return f"<ChatTemplate {self.name or '(unnamed)'!s}{f' format={fmt}' if fmt else ''}>"


def _token_text(vocab: Any, token: int) -> str:
    if token is None or token < 0 or token >= vocab.n_vocab:
        return ""
    return vocab.token_to_piece(token, special=True)


# -- well-known formats ------------------------------------------------------------------------
# Keys are the ``chat_format`` names llama-cpp-python users pass. Each source is the upstream
# model's own template (or, where a model card gives no template, the reference prompt format),
# written so that ``{{ bos_token }}``/``{{ eos_token }}`` come from the caller.
KNOWN_TEMPLATES: dict[str, str] = {
    # teknium/OpenHermes-2.5-Mistral-7B (the canonical ChatML template).
    "chatml": (
        "{% for message in messages %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Qwen/Qwen2-7B-Instruct: ChatML with a default system prompt.
    "qwen": (
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # meta-llama/Llama-2-7b-chat-hf. (It has no generation-prompt switch: a prompt ends with [/INST].)
    "llama-2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    # meta-llama/Meta-Llama-3-8B-Instruct.
    "llama-3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # mistralai/Mistral-7B-Instruct-v0.1/v0.2, current ("v1") template: the system message is put
    # in front of the first user message.
    "mistral-instruct": (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {%- set system_message = messages[0]['content'] %}\n"
        "    {%- set loop_messages = messages[1:] %}\n"
        "{%- else %}\n"
        "    {%- set loop_messages = messages %}\n"
        "{%- endif %}\n"
        "\n"
        "{{- bos_token }}\n"
        "{%- for message in loop_messages %}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
        "        {{- raise_exception('After the optional system message, conversation roles must alternate "
        "user/assistant/user/assistant/...') }}\n"
        "    {%- endif %}\n"
        "    {%- if message['role'] == 'user' %}\n"
        "        {%- if loop.first and system_message is defined %}\n"
        "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
        "        {%- else %}\n"
        "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
        "        {%- endif %}\n"
        "    {%- elif message['role'] == 'assistant' %}\n"
        "        {{- ' ' + message['content'] + eos_token}}\n"
        "    {%- else %}\n"
        "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an "
        "initial optional system message!') }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
    ),
    # google/gemma-2-2b-it turns, with a system message folded into the first user turn as Gemma 3
    # (and llama.cpp's built-in "gemma" format) do; Gemma 2's own template raises on it instead.
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{% set first_user_prefix = messages[0]['content'] | trim + '\\n\\n' %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}"
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')"
        " + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
    ),
    # microsoft/Phi-3.5-mini-instruct.
    "phi-3": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' and message['content'] %}"
        "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    # HuggingFaceH4/zephyr-7b-beta.
    "zephyr": (
        "{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n"
        "{% endif %}\n"
        "{% endfor %}"
    ),
    # Vicuna v1.1 (FastChat's "vicuna_v1.1" conversation; the models ship no template): the default
    # system prompt unless one is given, " " after user turns, EOS after assistant turns.
    "vicuna": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}"
        "{% set system_message = \"A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.\" %}{% endif %}"
        "{{ system_message + ' ' }}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
        "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    # Stanford Alpaca's prompt (no template upstream): preamble, "### Instruction:"/"### Response:".
    "alpaca": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}"
        "{% set system_message = 'Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.' %}{% endif %}"
        "{{ system_message + '\\n\\n' }}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    # openchat/openchat-3.5-0106.
    "openchat": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ 'GPT4 Correct ' + message['role'].title() + ': ' + message['content'] + '<|end_of_turn|>'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' }}{% endif %}"
    ),
}

# The special tokens of the models each known format comes from (used by get_template()).
_KNOWN_TOKENS: dict[str, tuple[str, str]] = {
    "chatml": ("", "<|im_end|>"),
    "qwen": ("", "<|im_end|>"),
    "llama-2": ("<s>", "</s>"),
    "llama-3": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral-instruct": ("<s>", "</s>"),
    "gemma": ("<bos>", "<eos>"),
    "phi-3": ("<s>", "<|endoftext|>"),
    "zephyr": ("<s>", "</s>"),
    "vicuna": ("<s>", "</s>"),
    "alpaca": ("<s>", "</s>"),
    "openchat": ("<s>", "<|end_of_turn|>"),
}

# Other spellings (llama.cpp's built-in names, detect_format()'s families).
_ALIASES: dict[str, str] = {
    "llama2": "llama-2",
    "llama3": "llama-3",
    "mistral": "mistral-instruct",
    "mistral-v1": "mistral-instruct",
    "phi3": "phi-3",
}


def get_template(name: str, *, bos_token: str | None = None, eos_token: str | None = None) -> ChatTemplate:
    """A :class:`ChatTemplate` for a well-known format (a :data:`KNOWN_TEMPLATES` key or an alias).

    BOS/EOS default to the texts of the models the format comes from (e.g. ``<|begin_of_text|>``
    for ``llama-3``). Raises ValueError for an unknown name, listing the known ones.
    """
    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in KNOWN_TEMPLATES:
        known = ", ".join(sorted(KNOWN_TEMPLATES))
        aliases = ", ".join(f"{a} ({b})" for a, b in sorted(_ALIASES.items()))
        raise ValueError(f"unknown chat format {name!r}; known formats: {known}; aliases: {aliases}")
    bos, eos = _KNOWN_TOKENS.get(key, ("", ""))
    return ChatTemplate(KNOWN_TEMPLATES[key], bos_token=bos if bos_token is None else bos_token,
                        eos_token=eos if eos_token is None else eos_token, name=key)


def detect_format(template_source: str | None) -> str | None:
    """Names the family of a template from its special markers (for logs), or None.

    Returns one of ``chatml``, ``phi-4``, ``llama-3``, ``llama-2``, ``mistral``, ``gemma``,
    ``phi-3``, ``zephyr``, ``openchat``, ``vicuna``, ``alpaca``. All but ``phi-4`` are accepted by
    :func:`get_template`. A heuristic: a family match does not mean the exact same prompt.
    """
    if not isinstance(template_source, str) or not template_source:
        return None
    s = template_source
    if "<|im_start|>" in s:
        return "phi-4" if "<|im_sep|>" in s else "chatml"
    if "<|start_header_id|>" in s and "<|end_header_id|>" in s:
        return "llama-3"
    if "[INST]" in s:
        return "llama-2" if "<<SYS>>" in s else "mistral"
    if "<start_of_turn>" in s:
        return "gemma"
    if "<|user|>" in s and "<|end|>" in s:
        return "phi-3"
    if "<|user|>" in s and "<|assistant|>" in s:
        return "zephyr"
    if "GPT4 Correct " in s:
        return "openchat"
    if "USER:" in s and "ASSISTANT:" in s:
        return "vicuna"
    if "### Instruction" in s and "### Response" in s:
        return "alpaca"
    return None
