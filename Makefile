# The README's two commands: `make run` (build, fetch the default model, stream an answer)
# and `make test` (build, fetch test inputs, run the test suite). Both set up everything.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEPS   := cffi numpy jinja2 requests pydantic pytest fastapi uvicorn python-multipart httpx openai langchain-core langchain-openai langchain-tests==1.1.9 tqdm gguf cymongoose soundfile soxr scipy huggingface_hub selenium \
         mkdocs 'mkdocstrings[python]' mkdocs-material nbclient nbformat ipykernel matplotlib schemathesis

.PHONY: venv build run test bench info docs clean

STAMP  := $(VENV)/.deps-installed

# the stamp depends on this Makefile, so a changed DEPS list reinstalls into an existing venv
$(STAMP): Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(DEPS)
	touch $(STAMP)

venv: $(STAMP)

# the project installed editable, so `import cyllama` and the `cyllama` command work from any folder
EDITABLE := $(VENV)/.editable-installed

build: $(STAMP)
	$(PY) build_lib.py
	test -f $(EDITABLE) || { $(PY) -m pip install -q --no-deps -e . && touch $(EDITABLE); }

run: build
	$(PY) -m cyllama generate --stream

info: build
	$(PY) -m cyllama info

test: build
	sh tools/install_browser.sh
	$(PY) -m pytest -q tests --benchmark-disable

# the documentation site (guide, migration guide, API reference from the docstrings) into site/;
# --strict fails on a broken link, anchor or API reference (tests/test_docs.py does the same)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

bench: build
	$(PY) benchmarks/bench_import.py
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_batch.py
	$(PY) benchmarks/bench_server.py
	$(PY) benchmarks/bench_speculative.py
	$(PY) benchmarks/bench_multimodal.py
	$(PY) benchmarks/bench_whisper.py

clean:
	$(PY) build_lib.py --clean || true
	rm -rf $(VENV)
