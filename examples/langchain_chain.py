#!/usr/bin/env python3
"""LangChain on a local model: LCEL chains, streaming, batching, tools and structured output.

    python examples/langchain_chain.py [GGUF_PATH]

Needs langchain-core (pip install cyllama[langchain]). The reference's old-style chain

    chain = LLMChain(llm=llm, prompt=prompt)
    result = chain.run(topic="quantum computing")

is, in LangChain 0.3+/1.x (LCEL), ``prompt | llm | StrOutputParser()`` and ``chain.invoke({...})``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langchain_core.callbacks import StreamingStdOutCallbackHandler  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from cyllama import LLM  # noqa: E402
from cyllama._assets import default_model_path  # noqa: E402
from cyllama.integrations import ChatCyllama, CyllamaEmbeddings, CyllamaLLM  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else str(default_model_path())
shared = LLM(path)  # one loaded model, shared by every LangChain object below

# -- a completion model in an LCEL chain (the modern form of LLMChain) ---------------------------
llm = CyllamaLLM(client=shared, temperature=0.7, max_tokens=40, seed=42)
prompt = PromptTemplate.from_template("Explain {topic} in simple terms:")
chain = prompt | llm | StrOutputParser()
print("== invoke ==")
print(chain.invoke({"topic": "quantum computing"}).strip())

print("\n== stream ==")
for piece in chain.stream({"topic": "photosynthesis"}):
    print(piece, end="", flush=True)
print()

# streaming=True reports every token to the callbacks, even from invoke()
print("\n== streaming callback ==")
streaming_llm = CyllamaLLM(client=shared, max_tokens=40, streaming=True,
                           callbacks=[StreamingStdOutCallbackHandler()])
streaming_llm.invoke("The three primary colours are")
print()

# several prompts are decoded together on cyllama's batching engine
print("\n== batch ==")
for topic, answer in zip(["gravity", "magnets"], chain.batch([{"topic": "gravity"}, {"topic": "magnets"}])):
    print(f"{topic}: {answer.strip()[:100]}")

# -- a chat model: the model's own chat template ------------------------------------------------
chat = ChatCyllama(client=shared, temperature=0, max_tokens=48)
chat_chain = ChatPromptTemplate.from_messages([
    ("system", "You are a helpful assistant who answers in one sentence."),
    ("human", "{question}"),
]) | chat | StrOutputParser()
print("\n== chat ==")
print(chat_chain.invoke({"question": "Why is the sky blue?"}))


# -- tools: a forced call has grammar-constrained arguments --------------------------------------
class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="the city name")


msg = chat.bind_tools([GetWeather], tool_choice="GetWeather").invoke("What's the weather like in Paris?")
print("\n== tool call ==")
print(msg.tool_calls)


# -- structured output: the answer is JSON generated under the schema's grammar -------------------
class Person(BaseModel):
    name: str
    age: int


print("\n== structured output ==")
print(repr(chat.with_structured_output(Person).invoke("Alice is 31 years old. Who is mentioned?")))

# -- embeddings ---------------------------------------------------------------------------------
emb = CyllamaEmbeddings(client=shared)
vectors = emb.embed_documents(["The cat sat on the mat.", "A dog lay on the rug."])
print(f"\n== embeddings ==\n{len(vectors)} vectors of {len(vectors[0])} dimensions")

llm.close()  # stops the batching engine
shared.close()
