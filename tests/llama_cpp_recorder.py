"""Seams for comparing chat handlers with llama-cpp-python's: a stand-in ``Llama`` that records the
prompts a handler asks it to complete and answers with scripted text, and a stand-in Hugging Face
tokenizer for the functionary v1/v2 handlers. Imported by ``test_llama_cpp_formats.py`` and by the
subprocess that runs llama-cpp-python's own ``llama_chat_format`` from its sdist."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import jinja2

#: a Functionary-v2-like chat template (the turn syntax its handler's suffix continues)
FUNCTIONARY_V2_TEMPLATE = (
    "{% for message in messages %}<|from|>{{ message['role'] }}\n<|recipient|>"
    "{% if message['role'] == 'assistant' and message.get('function_call') %}"
    "{{ message['function_call']['name'] }}\n<|content|>{{ message['function_call']['arguments'] }}"
    "{% else %}all\n<|content|>{{ message['content'] or '' }}{% endif %}\n{% endfor %}")


class FakeHFTokenizer:
    """What the functionary handlers read of a ``transformers`` tokenizer."""

    def __init__(self, template: str, additional_special_tokens: Optional[List[str]] = None):
        self.additional_special_tokens = list(additional_special_tokens or [])
        self._template = jinja2.Environment().from_string(template)

    def apply_chat_template(self, messages: List[Dict[str, Any]], tokenize: bool = False) -> str:
        return self._template.render(messages=messages, bos_token="<s>", eos_token="</s>")


class _Tokenizer:
    def __init__(self, hf: FakeHFTokenizer):
        self.hf_tokenizer = hf


class RecordingLlama:
    """Records ``create_completion`` calls; answers each with the next scripted text."""

    verbose = False

    def __init__(self, replies: List[str], hf: Optional[FakeHFTokenizer] = None):
        self.replies = list(replies)
        self.prompts: List[str] = []
        if hf is not None:
            self.tokenizer_ = _Tokenizer(hf)

    def create_completion(self, prompt: Any = "", stream: bool = False, **kwargs: Any) -> Any:
        self.prompts.append(prompt)
        text = self.replies.pop(0) if self.replies else ""
        out = {"id": "cmpl-0", "object": "text_completion", "created": 0, "model": "m",
               "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        if stream:
            return iter([out])
        return out
