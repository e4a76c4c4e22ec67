"""llama-cpp-python's README: speculative decoding by prompt lookup (only the import changed)."""
from _model import model_path

from cyllama.llama_cpp import Llama
from cyllama.llama_cpp.llama_speculative import LlamaPromptLookupDecoding

llama = Llama(
    model_path=model_path(),
    draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10) # num_pred_tokens is the number of tokens to predict 10 is the default and generally good for gpu, 2 performs better for cpu-only machines.
)
print(llama("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5,", max_tokens=24, temperature=0)["choices"][0]["text"])
