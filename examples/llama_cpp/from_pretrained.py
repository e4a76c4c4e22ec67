"""llama-cpp-python's README: ``Llama.from_pretrained`` (only the import changed). The file comes
from the Hugging Face cache when it is there (also with ``HF_HUB_OFFLINE=1``), else it is
downloaded."""
import os

from cyllama.llama_cpp import Llama

llm = Llama.from_pretrained(
    repo_id=os.environ.get("REPO_ID", "lmstudio-community/Qwen3.5-0.8B-GGUF"),
    filename=os.environ.get("FILENAME", "*Q8_0.gguf"),
    verbose=False
)
print(llm.model_path)
print(llm("Q: Name the planets in the solar system? A: ", max_tokens=16, stop=["Q:", "\n"])["choices"][0]["text"])
