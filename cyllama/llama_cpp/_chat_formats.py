"""llama-cpp-python's named chat formats: messages to the prompt text it renders for them.

Each ``format_*`` function returns exactly the prompt (and stop strings) llama-cpp-python 0.3.36's
function of the same name returns for the same messages (``tests/test_llama_cpp_formats.py``
compares them with the sdist's own functions). Roles a format does not know are left out, and
content that is not a string (a list of parts) counts as empty, as there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._common import StoppingCriteriaList

__all__ = [
    "ChatFormatterResponse", "FORMATS", "format_llama2", "format_llama3", "format_alpaca", "format_qwen",
    "format", "format_vicuna", "format_oasst_llama", "format_baichuan2", "format_baichuan", "format_openbuddy",
    "format_redpajama_incite", "format_snoozy", "format_phind", "format_intel", "format_open_orca",
    "format_mistrallite", "format_zephyr", "format_pygmalion", "format_chatml", "format_mistral_instruct",
    "format_chatglm3", "format_openchat", "format_saiga", "format_gemma",
]

Messages = Sequence[Mapping[str, Any]]
Turns = List[Tuple[str, Optional[str]]]


@dataclasses.dataclass
class ChatFormatterResponse:
    """A formatted prompt, the stop strings of its format, and whether the prompt already holds
    the special tokens (BOS) the tokenizer would otherwise add."""

    prompt: str
    stop: Optional[Union[str, List[str]]] = None
    stopping_criteria: Optional[StoppingCriteriaList] = None
    added_special: bool = False


# -- helpers (llama-cpp-python's _get_system_message, _map_roles and _format_* styles) ------------
def _check(messages: Messages) -> None:
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                         f"got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be a dict with a 'role' string")


def _system_message(messages: Messages) -> str:
    """The first system message's content ("" when there is none)."""
    for m in messages:
        if m["role"] == "system":
            return m.get("content") or ""
    return ""


def _map_roles(messages: Messages, role_map: Mapping[str, str]) -> Turns:
    """(role label, text) for the messages whose role the format knows; non-string content is None."""
    return [(role_map[m["role"]], m.get("content") if isinstance(m.get("content"), str) else None)
            for m in messages if m["role"] in role_map]


def _llama2_style(system: str, turns: Turns, sep: str, sep2: str) -> str:
    seps = [sep, sep2]
    out = system + sep
    for i, (role, text) in enumerate(turns):
        if system and i == 0:
            out += (text or "") + seps[i % 2]
        elif text:
            out += role + text + " " + seps[i % 2]
        else:
            out += role + " "
    return out


def _add_colon_single(system: str, turns: Turns, sep: str) -> str:
    out = system + sep
    for role, text in turns:
        out += role + ": " + text + sep if text else role + ":"
    return out


def _add_colon_two(system: str, turns: Turns, sep: str, sep2: str) -> str:
    seps = [sep, sep2]
    out = system + seps[0]
    for i, (role, text) in enumerate(turns):
        out += role + ": " + text + seps[i % 2] if text else role + ":"
    return out


def _no_colon_single(system: str, turns: Turns, sep: str) -> str:
    out = system
    for role, text in turns:
        out += role + text + sep if text else role
    return out


def _add_colon_space_single(system: str, turns: Turns, sep: str) -> str:
    out = system + sep
    for role, text in turns:
        out += role + ": " + text + sep if text else role + ": "
    return out


def _chatml_style(system: str, turns: Turns, sep: str) -> str:
    out = "" if system == "" else system + sep + "\n"
    for role, text in turns:
        out += role + "\n" + text + sep + "\n" if text else role + "\n"
    return out


def _chatglm3_style(system: str, turns: Turns) -> str:
    out = system or ""
    for role, text in turns:
        out += role + "\n" + " " + text if text else role
    return out


def _with_reply(messages: Messages, roles: Mapping[str, str], reply: str = "assistant") -> Turns:
    turns = _map_roles(messages, roles)
    turns.append((roles[reply], None))
    return turns


# -- the formats -----------------------------------------------------------------------------------
def format_llama2(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Llama 2 chat: ``<s>[INST] ... [/INST]``, the system prompt in ``<<SYS>>`` (no stop string)."""
    _check(messages)
    system = _system_message(messages)
    if system:
        system = f"[INST] <<SYS>>\n{system}\n<</SYS>>"
    turns = _map_roles(messages, {"user": "<s>[INST]", "assistant": "[/INST]"})
    return ChatFormatterResponse(prompt=_llama2_style(system, turns, " ", "</s>") + "[/INST]")


def format_llama3(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Llama 3 instruct: ``<|start_header_id|>role<|end_header_id|>`` turns ending ``<|eot_id|>``."""
    _check(messages)
    roles = {r: f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in ("system", "user", "assistant")}
    return ChatFormatterResponse(prompt=_no_colon_single("", _with_reply(messages, roles), "<|eot_id|>"),
                                 stop="<|eot_id|>")


def format_alpaca(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Alpaca: ``### Instruction:`` / ``### Response:`` (no trailing response header)."""
    _check(messages)
    turns = _map_roles(messages, {"user": "### Instruction", "assistant": "### Response"})
    return ChatFormatterResponse(prompt=_add_colon_two(_system_message(messages), turns, "\n\n", "</s>"))


def format_qwen(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Qwen (ChatML with a default system message); stops at ``<|endoftext|>``."""
    _check(messages)
    system = "<|im_start|>system\n" + (_system_message(messages) or "You are a helpful assistant.")
    turns = _with_reply(messages, {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"})
    return ChatFormatterResponse(prompt=_chatml_style(system, turns, "<|im_end|>"), stop="<|endoftext|>")


def format(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Vicuna (llama-cpp-python's function is named ``format``): ``USER: ... ASSISTANT:`` with
    Vicuna's fixed system prompt (a system message is ignored)."""
    _check(messages)
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.")
    turns = _with_reply(messages, {"user": "USER", "assistant": "ASSISTANT"})
    return ChatFormatterResponse(prompt=_add_colon_two(system, turns, " ", "</s>"))


format_vicuna = format


def format_oasst_llama(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    system = f"[INST] <<SYS>>\n{_system_message(messages)}\n<</SYS>>\n\n"
    turns = _with_reply(messages, {"user": "<|prompter|>", "assistant": "<|assistant|>"})
    return ChatFormatterResponse(prompt=_no_colon_single(system, turns, "</s>"))


def format_baichuan2(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    turns = _with_reply(messages, {"user": "<reserved_106>", "assistant": "<reserved_107>"})
    return ChatFormatterResponse(prompt=_no_colon_single(_system_message(messages), turns, ""))


def format_baichuan(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    turns = _with_reply(messages, {"user": "<reserved_102>", "assistant": "<reserved_103>"})
    return ChatFormatterResponse(prompt=_no_colon_single(_system_message(messages), turns, ""))


_OPENBUDDY_SYSTEM = """You are a helpful, respectful and honest INTP-T AI Assistant named Buddy. You are talking to a human User.
Always answer as helpfully and logically as possible, while being safe. Your answers should not include any harmful, political, religious, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.
If a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.
You can speak fluently in many languages, for example: English, Chinese.
You cannot access the internet, but you have vast knowledge, cutoff: 2021-09.
You are trained by OpenBuddy team, (https://openbuddy.ai, https://github.com/OpenBuddy/OpenBuddy), you are based on LLaMA and Falcon transformers model, not related to GPT or OpenAI.

"""  # noqa: E501  (the text is the format's)


def format_openbuddy(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """OpenBuddy, with its fixed system prompt (a system message is ignored)."""
    _check(messages)
    turns = _with_reply(messages, {"user": "User", "assistant": "Assistant"})
    return ChatFormatterResponse(prompt=_add_colon_single(_OPENBUDDY_SYSTEM, turns, "\n"))


def format_redpajama_incite(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    turns = _with_reply(messages, {"user": "<human>", "assistant": "<bot>"})
    return ChatFormatterResponse(prompt=_add_colon_single(_system_message(messages), turns, "\n"), stop="<human>")


def format_snoozy(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """GPT4All Snoozy. As in llama-cpp-python the system text goes in without its
    ``### Instruction:`` header."""
    _check(messages)
    system = _system_message(messages) or ("The prompt below is a question to answer, a task to complete, or a "
                                           "conversation to respond to; decide which and write an appropriate "
                                           "response.")
    turns = _with_reply(messages, {"user": "### Prompt", "assistant": "### Response"})
    return ChatFormatterResponse(prompt=_add_colon_single(system, turns, "\n"), stop="###")


def format_phind(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    turns = _with_reply(messages, {"user": "### User Message", "assistant": "### Assistant"})
    system = "### System Prompt\nYou are an intelligent programming assistant."
    return ChatFormatterResponse(prompt=_add_colon_single(system, turns, "\n\n"))


def format_intel(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Intel neural-chat. As in llama-cpp-python the system header keeps its literal
    ``{system_message}`` placeholder (a system message is ignored)."""
    _check(messages)
    turns = _with_reply(messages, {"user": "### User:", "assistant": "### Assistant:"})
    return ChatFormatterResponse(prompt=_add_colon_single("### System:\n{system_message}", turns, "\n"))


def format_open_orca(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """OpenOrca: roles named ``User``/``Assistant`` (messages with other role names are left out),
    a fixed system prompt, stop at ``User``."""
    _check(messages)
    system = ("You are a helpful assistant. Please answer truthfully and write out your thinking step by step to "
              "be sure you get the right answer. If you make a mistake or encounter an error in your thinking, say "
              "so out loud and attempt to correct it. If you don't know or aren't sure about something, say so "
              "clearly. You will act as a professional logician, mathematician, and physicist. You will also act "
              "as the most appropriate type of expert to answer any particular question or solve the relevant "
              "problem; state which expert type your are, if so. Also think of any particular named expert that "
              "would be ideal to answer the relevant question or solve the relevant problem; name and act as them, "
              "if appropriate.")
    turns = _with_reply(messages, {"User": "User", "Assistant": "Assistant"}, reply="Assistant")
    return ChatFormatterResponse(prompt=_add_colon_space_single(system, turns, "<|end_of_turn|>\n"), stop="User")


def format_mistrallite(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    system = f"<|system|>{_system_message(messages)}</s>"
    turns = _with_reply(messages, {"user": "<|prompter|>", "assistant": "</s>\n<|assistant|>"})
    return ChatFormatterResponse(prompt=_no_colon_single(system, turns, " "))


def format_zephyr(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    system = f"<|system|>\n{_system_message(messages)}"
    turns = _with_reply(messages, {"user": "<|user|>\n", "assistant": "<|assistant|>\n"})
    return ChatFormatterResponse(prompt=_chatml_style(system, turns, "</s>"), stop="</s>")


def format_pygmalion(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    system = f"<|system|>{_system_message(messages)}"
    turns = _with_reply(messages, {"user": "<|user|>", "assistant": "<|model|>"})
    return ChatFormatterResponse(prompt=_chatml_style(system, turns, "\n"), stop="\n")


def format_chatml(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """ChatML: ``<|im_start|>role\\ncontent<|im_end|>`` (an empty system turn when there is no
    system message, as in llama-cpp-python)."""
    _check(messages)
    system = f"<|im_start|>system\n{_system_message(messages)}"
    turns = _with_reply(messages, {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"})
    return ChatFormatterResponse(prompt=_chatml_style(system, turns, "<|im_end|>"), stop="<|im_end|>")


def format_mistral_instruct(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Mistral instruct: ``[INST] user [/INST]answer</s>`` turns (no BOS: the tokenizer adds it;
    system and tool messages are left out, as there)."""
    _check(messages)
    prompt = ""
    for m in messages:
        content = m.get("content")
        if m["role"] == "user" and isinstance(content, str):
            prompt += "[INST] " + content
        elif m["role"] == "assistant" and content is not None:
            prompt += " [/INST]" + content + "</s>"
    return ChatFormatterResponse(prompt=prompt + " [/INST]", stop="</s>")


def format_chatglm3(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    system = f"<|system|>\n{_system_message(messages)}"
    turns = _with_reply(messages, {"user": "<|user|>", "assistant": "<|assistant|>"})
    return ChatFormatterResponse(prompt=_chatglm3_style(system, turns), stop="</s>")


def format_openchat(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    _check(messages)
    system = f"{_system_message(messages)}<|end_of_turn|>"
    turns = _with_reply(messages, {"user": "GPT4 Correct User: ",
                                   "assistant": "<|end_of_turn|>GPT4 Correct Assistant: "})
    return ChatFormatterResponse(prompt=_chatml_style(system, turns, "<|end_of_turn|>"), stop="<|end_of_turn|>")


def format_saiga(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Saiga: ``<s>role\\ncontent</s>`` turns (the assistant is ``bot``: llama-cpp-python maps only
    a ``bot`` role to it, so ``assistant`` messages are left out there and here)."""
    _check(messages)
    prompt = ""
    for role, text in _map_roles(messages, {"user": "user", "bot": "bot", "system": "system"}):
        prompt += f"<s>{role}\n{text}</s>" if text else f"<s>{role}\n"
    return ChatFormatterResponse(prompt=(prompt + "<s>bot").strip())


def format_gemma(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Gemma: ``<start_of_turn>user`` / ``<start_of_turn>model`` (system messages are left out)."""
    _check(messages)
    turns = _with_reply(messages, {"user": "<start_of_turn>user\n", "assistant": "<start_of_turn>model\n"})
    return ChatFormatterResponse(prompt=_no_colon_single("", turns, "<end_of_turn>\n"), stop="<end_of_turn>\n")


#: llama-cpp-python's registered chat formats, in its order, by name.
FORMATS: Dict[str, Any] = {
    "llama-2": format_llama2, "llama-3": format_llama3, "alpaca": format_alpaca, "qwen": format_qwen,
    "vicuna": format, "oasst_llama": format_oasst_llama, "baichuan-2": format_baichuan2,
    "baichuan": format_baichuan, "openbuddy": format_openbuddy, "redpajama-incite": format_redpajama_incite,
    "snoozy": format_snoozy, "phind": format_phind, "intel": format_intel, "open-orca": format_open_orca,
    "mistrallite": format_mistrallite, "zephyr": format_zephyr, "pygmalion": format_pygmalion,
    "chatml": format_chatml, "mistral-instruct": format_mistral_instruct, "chatglm3": format_chatglm3,
    "openchat": format_openchat, "saiga": format_saiga, "gemma": format_gemma,
}
