"""Atomic, verifiable, resumable checkpoints. Never pickle: safetensors and JSON only.

A checkpoint is written into `checkpoints/.step-N.tmp-<pid>/`, every file fsynced, a
`manifest.json` of sha256 sums written last, then the folder is renamed to `step-N`
(`fsutil.replace_dir`). A folder
without a valid manifest (a crash mid-write, a torn file) is never loaded: `latest()` skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from openrft.errors import ConfigError
from openrft.fsutil import fsync_path, replace_dir, sha256_file, write_atomic
from openrft.tracking.progress import Reporter
from openrft.tracking.run_dir import RunDir

MANIFEST = "manifest.json"


def write_manifest(folder: Path, extra: dict[str, Any] | None = None) -> None:
    files = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
            files[str(f.relative_to(folder))] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    body = {"files": files, "created": time.time(), **(extra or {})}
    write_atomic(folder / MANIFEST, json.dumps(body, indent=2), durable=True)


def verify(folder: Path) -> bool:
    """True if the manifest exists and every listed file has its recorded sha256."""
    m = folder / MANIFEST
    if not m.is_file():
        return False
    try:
        files = json.loads(m.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError):
        return False
    for rel, info in files.items():
        f = folder / rel
        if not f.is_file() or f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
            return False
    return True


# -- optimizer state <-> flat tensors + JSON ---------------------------------------------------


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    for pid, sc in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# -- save / load ---------------------------------------------------------------------------------


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically under `root` and prune older ones beyond `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"

    def build(tmp: Path) -> None:
        tmp.mkdir()
        model.save_pretrained(tmp / "adapter", safe_serialization=True)
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["torch_cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        trainer_state = {"step": step, "scheduler": scheduler.state_dict(), "optimizer": opt_meta, **state}
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
        write_manifest(tmp, {"step": step})  # fsyncs every file, the manifest last

    replace_dir(final, build)
    fsync_path(root)
    for old in list_complete(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_complete(root: Path) -> list[Path]:
    """Finished checkpoint folders (renamed, with a manifest), oldest first. Not verified."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest(root: Path) -> Path | None:
    """The newest checkpoint whose files all match their manifest."""
    for p in reversed(list_complete(root)):
        if verify(p):
            return p
    return None


def cleanup_partial(root: Path) -> None:
    """Remove half-written temp folders left by a crash."""
    if root.is_dir():
        for p in [*root.glob(".step-*.tmp-*"), *root.glob(".step-*.old-*"), *root.glob(".tmp-step-*")]:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(
    folder: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    full: bool = False,
) -> dict[str, Any]:
    """Restore adapter weights (or, with `full`, every weight of a model saved whole by
    `save_pretrained`), optimizer, scheduler and RNG; return the trainer state."""
    if full:
        weights: dict[str, torch.Tensor] = {}
        for f in sorted((folder / "adapter").glob("*.safetensors")):
            weights.update(load_file(str(f)))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight")}
        if set(missing) - tied or unexpected:
            raise ConfigError(
                f"{folder}: checkpoint does not match the model (missing {sorted(missing)[:3]})"
            )
    else:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter" / "adapter_model.safetensors")))
    return restore_trainer_state(folder, optimizer=optimizer, scheduler=scheduler)


def restore_trainer_state(
    folder: Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG from a checkpoint folder; return the trainer state."""
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    optimizer_from_flat(optimizer, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    return state


def restore(
    run: RunDir,
    resume: bool,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    reporter: Reporter,
    full: bool = False,
) -> int:
    """Load the newest verified checkpoint when resuming; return the step to continue after."""
    cleanup_partial(run.checkpoints)
    if not resume:
        return 0
    start = 0
    last = latest(run.checkpoints)
    if last is not None:
        state = load_checkpoint(last, model=model, optimizer=optimizer, scheduler=scheduler, full=full)
        start = int(state["step"])
        reporter.message(f"resumed from {last} (step {start})")
    run.truncate_after(start)
    return start
