"""The int8 copy of the model (``memory.int8``): built once into its folder, then reused; its
vectors are the float model's within quantization error; the embedder runs it by default."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import pytest

from memory import int8
from memory.embedder import Embedder, OnnxEmbedder
from memory.int8 import copy_name, int8_copy, reduced_range

pytestmark = pytest.mark.slow

TEXTS = [
    "I moved to Lisbon last spring, and I still take the tram to work.",
    "My sister Ana is a nurse in Porto.",
    "Remind me to renew my passport before the trip to Japan.",
    "The quarterly report is due on Friday; Marco reviews it.",
    "thanks!",
]


def source() -> Path:
    from memory.int8 import packaged_model

    return packaged_model()


def test_the_copy_is_built_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cache"
    first = int8_copy(source(), folder)
    assert first.parent == folder
    assert first.name == copy_name(source(), reduced_range())
    assert [p.name for p in folder.iterdir()] == [first.name]  # no partial file left
    assert first.stat().st_mode & 0o044 == 0o044  # readable by the user that serves
    import onnx

    ops = [node.op_type for node in onnx.load(str(first)).graph.node]
    assert ops.count("MatMulInteger") == 36  # the 6 linear maps of each of the 6 layers

    def rebuild(*args: object) -> None:
        raise AssertionError("the copy was built again")

    monkeypatch.setattr(int8, "_quantize", rebuild)
    assert int8_copy(source(), folder) == first


def test_an_image_holds_both_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dockerfile's step: 8-bit and 7-bit weights, so that a container on either kind of
    CPU finds the copy it needs without building it."""
    from memory.int8 import packaged_copies

    made = packaged_copies(tmp_path)
    assert [p.name for p in made] == [copy_name(source(), False), copy_name(source(), True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in made)
    for cpu_without_vnni in (False, True):  # each kind of CPU finds its own, nothing built
        monkeypatch.setattr(int8, "reduced_range", functools.partial(bool, cpu_without_vnni))
        monkeypatch.setattr(int8, "_quantize", lambda *a: pytest.fail("built again"))
        assert int8_copy(source(), tmp_path) == made[cpu_without_vnni]
    dockerfile = (Path(__file__).parents[2] / "Dockerfile").read_text()
    assert "packaged_copies('/app/models')" in dockerfile
    assert "ENV MEMGATE_EMBEDDER_CACHE_DIR=/app/models" in dockerfile


def test_an_unwritable_folder_gets_a_copy_for_this_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    copy = int8_copy(source(), blocker / "cache")
    assert copy.is_file()
    assert copy.parent != blocker / "cache"
    assert "embedder.cache_dir" in caplog.text


def test_reduced_range_only_on_x86_without_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8.platform, "machine", lambda: "x86_64")
    assert reduced_range("flags : fpu sse2 avx2 fma") is True
    assert reduced_range("flags : fpu avx2 avx512f avx512_vnni") is False
    assert reduced_range("flags : fpu avx2 avx_vnni") is False
    monkeypatch.setattr(int8.platform, "machine", lambda: "aarch64")
    assert reduced_range("Features : fp asimd") is False


def test_int8_vectors_are_the_float_models(minilm: Embedder, tmp_path: Path) -> None:
    assert isinstance(minilm, OnnxEmbedder)
    assert minilm.model_file.name.endswith(".int8.onnx")  # the default runs the copy
    plain = OnnxEmbedder(int8=False)
    assert plain.model_file == source()
    a, b = minilm.embed(TEXTS), plain.embed(TEXTS)
    cosines = (a * b).sum(axis=1)
    # "thanks!": short texts move most, and more with the 7-bit weights of an x86 CPU without
    # VNNI (an AMD EPYC, 2026-12-01: "thanks!" 0.941 in this batch; 300 LoCoMo turns there,
    # mean 0.990 and lowest 0.978)
    seven_bits = "-w7-" in minilm.model_file.name
    assert float(cosines.mean()) > (0.975 if seven_bits else 0.98)
    assert float(cosines.min()) > (0.93 if seven_bits else 0.95)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # the same neighbours either way
    assert (np.argsort(-(a @ a[0]))[:3] == np.argsort(-(b @ b[0]))[:3]).all()
    # and it is faster: integer products (both timed alike, interleaved, best of 15)
    query = ["Where does my sister work?"]
    spent = {id(minilm): [], id(plain): []}  # type: dict[int, list[float]]
    for _ in range(15):
        for model in (minilm, plain):
            start = time.perf_counter()
            model.embed(query)
            spent[id(model)].append(time.perf_counter() - start)
    assert min(spent[id(minilm)]) < min(spent[id(plain)])


def test_settings_choose_the_copy_and_its_folder(tmp_path: Path) -> None:
    from gateway.app import open_embedder
    from gateway.config import load_settings

    env = {"MEMGATE_EMBEDDER_CACHE_DIR": str(tmp_path / "models")}
    made = open_embedder(load_settings(None, env))
    assert isinstance(made, OnnxEmbedder)
    assert made.model_file.parent == tmp_path / "models"
    off = open_embedder(load_settings(None, {**env, "MEMGATE_EMBEDDER_INT8": "false"}))
    assert isinstance(off, OnnxEmbedder)
    assert off.model_file == source()
    assert os.listdir(tmp_path / "models") == [made.model_file.name]
