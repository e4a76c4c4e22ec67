"""llama-cpp-python's README: chat completion with a named chat format (only the import changed;
``max_tokens`` bounds a small model's answer)."""
from _model import model_path

from cyllama.llama_cpp import Llama

llm = Llama(
      model_path=model_path(),
      chat_format="llama-2"
)
print(llm.create_chat_completion(
      messages = [
          {"role": "system", "content": "You are an assistant who perfectly describes images."},
          {
              "role": "user",
              "content": "Describe this image in detail please."
          }
      ],
      max_tokens=48,
))
