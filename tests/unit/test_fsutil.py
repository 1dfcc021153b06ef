"""openrft.fsutil: atomic file and folder writes leave the old content or the new one, never a
torn file, a half-built folder or a temp file behind."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from openrft import fsutil


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_write_atomic_creates_the_parent_and_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    fsutil.write_atomic(target, "first")
    fsutil.write_atomic(target, b"second \xe2\x9c\x93")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert leftovers(target.parent) == []


def test_durable_writes_land_like_plain_ones(tmp_path: Path) -> None:
    fsutil.write_atomic(tmp_path / "x.bin", b"\x00\x01", durable=True)
    fsutil.write_json_atomic(tmp_path / "x.json", {"a": [1, 2]}, durable=True)
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "x.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    fsutil.write_json_atomic(tmp_path / "x.json", {"a": 1}, indent=None)
    assert (tmp_path / "x.json").read_text() == '{"a": 1}\n'
    assert leftovers(tmp_path) == []


def test_a_failing_write_keeps_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    fsutil.write_atomic(target, "old")
    with pytest.raises(TypeError):
        fsutil.write_json_atomic(target, {"not json": object()})
    with pytest.raises(RuntimeError, match="stream broke"), fsutil.atomic_file(target) as fh:
        fh.write(b"half of the n")
        raise RuntimeError("stream broke")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_mode_is_set_before_the_content_is_written(tmp_path: Path) -> None:
    target = tmp_path / "key"
    fsutil.write_atomic(target, "secret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "secret"


def _rewrite(path: str, n: int) -> None:
    for i in range(n):
        fsutil.write_atomic(path, (str(i % 2) * 200_000).encode())


def test_a_reader_never_sees_a_torn_file(tmp_path: Path) -> None:
    target = tmp_path / "big.txt"
    old, new = b"0" * 200_000, b"1" * 200_000
    fsutil.write_atomic(target, old)
    writer = multiprocessing.get_context("fork").Process(target=_rewrite, args=(str(target), 200))
    writer.start()
    reads = 0
    try:
        while writer.is_alive():
            data = target.read_bytes()
            assert data in (old, new), f"torn read: {len(data)} bytes"
            reads += 1
    finally:
        writer.join()
    assert writer.exitcode == 0 and reads > 0
    assert target.read_bytes() == new
    assert leftovers(tmp_path) == []


def test_replace_dir_builds_a_new_folder_and_replaces_an_existing_one(tmp_path: Path) -> None:
    target = tmp_path / "adapter"

    def build(files: dict[str, str]):
        def write(tmp: Path) -> None:
            tmp.mkdir()
            for name, text in files.items():
                (tmp / name).write_text(text)

        return write

    assert fsutil.replace_dir(target, build({"a.txt": "1", "b.txt": "2"})) == target
    fsutil.replace_dir(target, build({"c.txt": "3"}), durable=True)
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]  # the old folder's files are gone
    assert (target / "c.txt").read_text() == "3"
    assert leftovers(tmp_path) == []


def test_a_failing_build_leaves_the_old_folder_intact_and_no_temp_folder(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old")

    def broken(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "weights").write_text("half")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        fsutil.replace_dir(target, broken, durable=True)
    assert sorted(p.name for p in target.iterdir()) == ["weights"]
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_failing_rename_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old")
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(src).name.startswith(".adapter.tmp-"):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        fsutil.replace_dir(target, lambda tmp: tmp.mkdir())
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_copy_dir_replaces_the_destination_with_a_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.json").write_text(json.dumps({"k": 1}))
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "stale").write_text("x")
    fsutil.copy_dir(src, dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*")) == ["sub", "sub/f.json"]
    assert json.loads((dst / "sub" / "f.json").read_text()) == {"k": 1}
    assert (src / "sub" / "f.json").exists()
