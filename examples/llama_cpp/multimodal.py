"""llama-cpp-python's README: multimodal chat with ``Llava15ChatHandler`` and an image as a data URI
(only the import changed). Usage: ``multimodal.py MODEL MMPROJ IMAGE.png``."""
import base64
import sys

from cyllama.llama_cpp import Llama
from cyllama.llama_cpp.llama_chat_format import Llava15ChatHandler

def image_to_base64_data_uri(file_path):
    with open(file_path, "rb") as img_file:
        base64_data = base64.b64encode(img_file.read()).decode('utf-8')
        return f"data:image/png;base64,{base64_data}"

model, mmproj, file_path = sys.argv[1:4]
data_uri = image_to_base64_data_uri(file_path)

chat_handler = Llava15ChatHandler(clip_model_path=mmproj)
llm = Llama(
  model_path=model,
  chat_handler=chat_handler,
  n_ctx=2048, # n_ctx should be increased to accommodate the image embedding
)
messages = [
    {"role": "system", "content": "You are an assistant who perfectly describes images."},
    {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_uri }},
            {"type" : "text", "text": "Describe this image in detail please."}
        ]
    }
]
out = llm.create_chat_completion(messages=messages, max_tokens=16)
print(out["choices"][0]["message"]["role"], out["usage"]["prompt_tokens"])
