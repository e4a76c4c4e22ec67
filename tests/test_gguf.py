from __future__ import annotations

import pytest

from cyllama import GGUFContext, LlamaModel, LlamaModelParams


def test_read_metadata_and_tensors(model_path) -> None:
    with GGUFContext.from_file(model_path) as g:
        md = g.get_all_metadata()
        assert md["general.architecture"] == "llama"
        assert g.get_val_str("general.architecture") == "llama"
        assert g.get_val_u32("llama.block_count") == 30
        assert isinstance(md["tokenizer.ggml.tokens"], list) and len(md["tokenizer.ggml.tokens"]) == 49152
        tensors = g.get_tensors()
        assert len(tensors) == g.n_tensors > 100
        assert {"name", "type", "shape", "offset", "size"} <= set(tensors[0])
        with pytest.raises(TypeError):
            g.get_val_u32("general.architecture")  # would abort inside ggml without the check
        with pytest.raises(KeyError):
            g.get_val_str("no.such.key")


def test_empty_round_trip(tmp_path) -> None:
    g = GGUFContext.empty()
    g.set_val_str("custom.key", "value")
    g.set_val_u32("custom.number", 42)
    g.set_val_f32("custom.float", 1.5)
    g.set_val_bool("custom.flag", True)
    g.set_val_i64("custom.big", -(2**40))
    g.set_arr_str("custom.list", ["a", "b", "ç"])
    g.set_arr_data("custom.ints", "int32", [1, -2, 3])
    with pytest.raises(ValueError):
        g.set_val_u8("custom.small", 300)
    out = g.write_to_file(tmp_path / "custom.gguf", write_tensors=False)
    back = GGUFContext.from_file(out).get_all_metadata()
    assert back["custom.key"] == "value" and back["custom.number"] == 42
    assert back["custom.float"] == 1.5 and back["custom.flag"] is True and back["custom.big"] == -(2**40)
    assert back["custom.list"] == ["a", "b", "ç"] and back["custom.ints"] == [1, -2, 3]


def test_modify_model_and_load_it(tmp_path, model_path) -> None:
    g = GGUFContext.from_file(model_path)
    g.set_val_str("custom.metadata", "updated")
    g.set_val_str("general.name", "renamed")
    out = g.write_to_file(tmp_path / "modified.gguf")
    g.close()
    with LlamaModel(out) as m:
        assert m.meta_val_str("custom.metadata") == "updated"
        assert m.metadata["general.name"] == "renamed"
        assert m.n_params > 100e6


def test_bad_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        GGUFContext.from_file(tmp_path / "none.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 100)
    with pytest.raises(ValueError):
        GGUFContext.from_file(bad)
