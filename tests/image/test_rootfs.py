"""tools/rootfs.py's copier on a small tree: symlinks kept as symlinks with their targets copied too
(merged /usr, Debian alternatives), symlinked directories on the way recreated, dropped globs left
out, and the ELF closure of a real binary. Part of `make test`; the image build runs it for real."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("rootfs", ROOT / "tools" / "rootfs.py")
rootfs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rootfs)


def copied(out: Path, path: Path) -> Path:
    return out / os.path.relpath(path, "/")


def test_symlink_chains_and_symlinked_directories_are_kept(tmp_path):
    src = tmp_path / "src"
    (src / "usr/lib/real").mkdir(parents=True)
    (src / "usr/lib/real/libx.so.1.2").write_bytes(b"x")
    (src / "etc/alternatives").mkdir(parents=True)
    os.symlink("/" + os.path.relpath(src / "usr/lib/real/libx.so.1.2", "/"), src / "etc/alternatives/libx")
    os.symlink("../../etc/alternatives/libx", src / "usr/lib/libx.so.1")  # relative, into an absolute one
    os.symlink("usr/lib", src / "lib")  # merged /usr
    (src / "usr/share/doc/x").mkdir(parents=True)
    (src / "usr/share/doc/x/README").write_text("docs")
    out = tmp_path / "out"
    out.mkdir()
    tree = rootfs.Tree(out, (f"{src}/usr/share/doc/*",))  # as rootfs.DROP's /usr/share/doc/*, under src
    tree.add(str(src / "lib/libx.so.1"))  # through the symlinked directory
    tree.add_tree(str(src / "usr/share"))
    assert copied(out, src / "lib").is_symlink() and os.readlink(copied(out, src / "lib")) == "usr/lib"
    assert os.readlink(copied(out, src / "usr/lib/libx.so.1")) == "../../etc/alternatives/libx"
    assert copied(out, src / "etc/alternatives/libx").is_symlink()
    assert copied(out, src / "usr/lib/real/libx.so.1.2").read_bytes() == b"x"
    assert not copied(out, src / "usr/share/doc/x/README").exists()  # documentation never ships


def test_an_elf_binary_brings_its_libraries(tmp_path):
    python = shutil.which("python3", path="/usr/bin")
    libs = rootfs.libraries(Path(os.path.realpath(python)))
    assert any("libc.so.6" in lib for lib in libs) and any("ld-linux" in lib for lib in libs), libs
    assert not rootfs.libraries(ROOT / "tools" / "rootfs.py")  # not an ELF file: nothing
