"""llama-cpp-python's README: embeddings (only the import changed)."""
from _model import model_path

import cyllama.llama_cpp as llama_cpp

llm = llama_cpp.Llama(model_path=model_path(), embedding=True)

embeddings = llm.create_embedding("Hello, world!")

# or create multiple embeddings at once

embeddings = llm.create_embedding(["Hello, world!", "Goodbye, world!"])
# a model without a pooling type (this generative one) gives one vector per token, as in llama-cpp-python
import numpy as np
print(len(embeddings["data"]), *np.shape(embeddings["data"][0]["embedding"]))
