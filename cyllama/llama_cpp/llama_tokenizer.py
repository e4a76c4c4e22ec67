"""Tokenizers (llama-cpp-python's API): the model's own, or a Hugging Face one."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, List, Optional

if TYPE_CHECKING:
    from ._llama import Llama

__all__ = ["BaseLlamaTokenizer", "LlamaTokenizer", "LlamaHFTokenizer"]


class BaseLlamaTokenizer(abc.ABC):
    @abc.abstractmethod
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> List[int]:
        """Tokenize UTF-8 ``text``; ``add_bos`` adds BOS (when the model uses one), ``special``
        parses special-token text such as ``</s>``."""
        raise NotImplementedError

    @abc.abstractmethod
    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None,
                   special: bool = False) -> bytes:
        """Tokens to UTF-8 bytes; ``special`` renders special tokens as their text."""
        raise NotImplementedError


def _as_bytes(text: Any) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"text must be bytes (or str), got {type(text).__name__}")


class LlamaTokenizer(BaseLlamaTokenizer):
    """The model's own tokenizer (llama.cpp's)."""

    def __init__(self, llama: "Llama"):
        self._vocab = llama._vocab

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> List[int]:
        return self._vocab.tokenize(_as_bytes(text), add_special=bool(add_bos), parse_special=bool(special))

    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None,
                   special: bool = False) -> bytes:
        # Like llama-cpp-python: the pieces joined, and the space a SentencePiece tokenizer puts in
        # front of the first word dropped after a leading BOS.
        vocab = self._vocab
        if not isinstance(tokens, (list, tuple)):
            tokens = list(tokens)
        to_bytes = vocab.token_to_bytes
        out = b"".join([to_bytes(int(t), special=bool(special)) for t in tokens])
        if tokens and int(tokens[0]) == vocab.bos and out[:1] == b" ":
            return out[1:]
        return out

    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> List[int]:
        return self.tokenize(text.encode("utf-8", errors="ignore"), add_bos=add_bos, special=special)

    def decode(self, tokens: List[int]) -> str:
        return self.detokenize(tokens).decode("utf-8", errors="ignore")

    @classmethod
    def from_ggml_file(cls, path: str) -> "LlamaTokenizer":
        from ._llama import Llama

        return cls(Llama(model_path=path, vocab_only=True, verbose=False))


class LlamaHFTokenizer(BaseLlamaTokenizer):
    """A Hugging Face ``transformers`` tokenizer in place of the model's."""

    def __init__(self, hf_tokenizer: Any):
        self.hf_tokenizer = hf_tokenizer

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> List[int]:
        return self.hf_tokenizer.encode(_as_bytes(text).decode("utf-8", errors="ignore"),
                                        add_special_tokens=special)

    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None,
                   special: bool = False) -> bytes:
        skip = not special
        if prev_tokens is not None:
            text = self.hf_tokenizer.decode(list(prev_tokens) + list(tokens), skip_special_tokens=skip)
            prev = self.hf_tokenizer.decode(list(prev_tokens), skip_special_tokens=skip)
            return text[len(prev):].encode("utf-8", errors="ignore")
        return self.hf_tokenizer.decode(tokens, skip_special_tokens=skip).encode("utf-8", errors="ignore")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str) -> "LlamaHFTokenizer":
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ImportError("The `transformers` library is required to use the `HFTokenizer`. "
                              "You can install it with `pip install transformers`.") from None
        return cls(AutoTokenizer.from_pretrained(pretrained_model_name_or_path=pretrained_model_name_or_path))
