#!/usr/bin/python3
"""Builds the images' final root filesystems inside a Dockerfile build stage (Debian's python3, stdlib only).

`rootfs.py assemble OUT --package P... --path PATH...` copies what the named Debian packages
installed and the given paths, then every shared library their ELF files load (ldd), following
symlinks on the way (merged /usr, alternatives), and nothing else: no shell, no apt, no dpkg, no
coreutils. A `FROM scratch` stage copies OUT whole, so the image holds exactly what runs.

`rootfs.py headers OUT RELEASE` writes the subset of the Debian linux-headers of RELEASE that BCC
reads to compile bpf/xtrace.c, as one merged tree at OUT/RELEASE: the agent's fallback when a node
has no kernel headers. It compiles the program under strace with the agent's own flags (every
sampling branch), keeps each header file opened, then compiles again against the subset alone
and fails the build if anything is missing: a change to bpf/ gets its new headers on the next build.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

# never wanted in an image: documentation, translations, packaging metadata, bytecode of the build
DROP = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
        "/usr/share/lintian/*", "/usr/share/bug/*", "*/__pycache__/*", "*/__pycache__")


class Tree:
    """The destination root; `add` copies one path of the build stage, symlink chains included."""

    def __init__(self, out: Path, drop: tuple[str, ...]):
        self.out = out
        self.drop = drop
        self.seen: set[str] = set()

    def dropped(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pat) for pat in self.drop)

    def add(self, path: str) -> None:
        path = os.path.normpath(path)
        if path in self.seen or self.dropped(path):
            return
        self.seen.add(path)
        parent = os.path.dirname(path)
        if parent != path:
            self.add_dir(parent)
        real_parent = os.path.realpath(parent)
        src = os.path.join(real_parent, os.path.basename(path))
        dst = self.out / os.path.relpath(os.path.join(real_parent, os.path.basename(path)), "/")
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(src)
            if not dst.is_symlink():
                os.symlink(target, dst)
            self.add(os.path.join(real_parent, target))
        elif stat.S_ISDIR(st.st_mode):
            self.add_dir(src)
        elif not dst.exists():
            shutil.copy2(src, dst, follow_symlinks=False)

    def add_dir(self, path: str) -> None:
        """A directory and its parents, symlinked components recreated as symlinks."""
        if path == "/":
            return
        parent = os.path.dirname(path)
        self.add_dir(parent)
        src = os.path.join(os.path.realpath(parent), os.path.basename(path))
        dst = self.out / os.path.relpath(src, "/")
        if os.path.islink(src):
            if not dst.is_symlink():
                os.symlink(os.readlink(src), dst)
            self.add_dir(os.path.realpath(src))
        elif not dst.is_dir():
            dst.mkdir()
            shutil.copystat(src, dst)

    def add_tree(self, path: str) -> None:
        self.add(path)
        if os.path.isdir(path) and not os.path.islink(path):
            for dirpath, dirnames, filenames in os.walk(path):
                for name in sorted(dirnames + filenames):
                    self.add(os.path.join(dirpath, name))


def package_files(package: str) -> list[str]:
    out = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if p.startswith("/") and (os.path.islink(p) or not os.path.isdir(p))]


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def libraries(elf: Path) -> list[str]:
    """The shared objects an ELF file loads, as ldd resolves them (the interpreter included)."""
    r = subprocess.run(["ldd", str(elf)], capture_output=True, text=True)
    if r.returncode != 0:  # static, or not a dynamic object
        return []
    libs = re.findall(r"=>\s+(/\S+)", r.stdout) + re.findall(r"^\s+(/\S+)\s+\(", r.stdout, re.M)
    if "not found" in r.stdout:
        sys.exit(f"rootfs: {elf}: {r.stdout.strip()}")
    return libs


def soname_path(soname: str) -> str:
    """Where the loader finds a library Python opens by name at run time (ctypes.CDLL("librt.so.1"))."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^\s+{re.escape(soname)} \(.*\) => (/\S+)$", out, re.M)
    if not m:
        sys.exit(f"rootfs: no {soname} in the loader cache")
    return m.group(1)


def assemble(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tree = Tree(out, DROP + tuple(args.drop))
    for package in args.package:
        for path in package_files(package):
            tree.add(path)
    for path in args.path:
        tree.add_tree(path)
    for soname in args.library:
        tree.add(soname_path(soname))
    done: set[Path] = set()
    while True:  # the ELF closure: every binary and extension module copied, until nothing new
        elves = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink() and p not in done and is_elf(p)]
        if not elves:
            break
        for elf in elves:
            done.add(elf)
            for lib in libraries(elf):
                tree.add(lib)
    for d in ("tmp", "etc", "proc", "sys", "dev"):
        (out / d).mkdir(exist_ok=True)
    os.chmod(out / "tmp", 0o1777)
    # the image's users, by number: root and the unprivileged 65532 ("nonroot", as distroless names it)
    (out / "etc/passwd").write_text("root:x:0:0:root:/root:/nonexistent\nnonroot:x:65532:65532::/home/nonroot:/nonexistent\n")
    (out / "etc/group").write_text("root:x:0:\nnonroot:x:65532:\n")
    for conf in ("/etc/ld.so.conf", "/etc/ld.so.conf.d"):
        tree.add_tree(conf)
    subprocess.run(["ldconfig", "-r", str(out)], check=True)  # the loader cache ctypes' dlopen by soname needs


COMPILE = """\
import json, sys
from bcc import BPF
for cflags in json.loads(sys.argv[2]):
    try:
        BPF(src_file=sys.argv[1].encode(), cflags=cflags)
    except Exception as e:  # loading may fail in a build container (no BPF there): clang's verdict counts
        print("rootfs-compile:", e, file=sys.stderr)
"""


def compile_variants(source: str, flags: list[list[str]], kernel_source: str, trace: Path | None = None) -> None:
    """Compile the program once per flag set against kernel_source (under strace when `trace` is
    given, which follows the compile's own children too); exit naming the first compile error."""
    cmd = [sys.executable, "-c", COMPILE, source, json.dumps(flags)]
    if trace:
        cmd = ["strace", "-f", "-qq", "-e", "trace=openat,open", "-o", str(trace), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BCC_KERNEL_SOURCE": kernel_source})
    # clang's diagnostics only ("file:line:col: error:"): a map BCC cannot create says "error:" too
    errors = [ln for ln in r.stderr.splitlines() if re.search(r":\d+:\d+: (fatal )?error:", ln)]
    if r.returncode != 0 or errors:
        sys.exit(f"rootfs: compiling {source} against {kernel_source}: {(errors or r.stderr.splitlines() or ['?'])[0]}")


def headers(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.agent_src)
    from xtrace_agent.xdp import compiler
    from xtrace_agent.xdp import headers as hdr

    found = [h for h in hdr.candidates("/nonexistent", "/usr/src") if h.release == args.release]
    if not found:
        sys.exit(f"rootfs: no linux-headers for {args.release} in /usr/src")
    merged = hdr.merged_tree(found[0], args.work)
    source = str(compiler.bpf_dir() / "xtrace.c")
    try:  # the constants the agent defines for the C (XT_TRAFFIC_*...), as xdp/program.py passes them
        from xtrace_agent.xdp import layout
        extra = layout.defines()
    except ImportError:
        extra = {}
    flags = [compiler.cflags(65536, sampling, extra) for sampling in (1, 2)]
    trace = Path(args.work) / "open.trace"
    compile_variants(source, flags, merged, trace)
    dest = Path(args.out) / args.release
    kept = 0
    for line in trace.read_text().splitlines():
        m = re.search(r'open(?:at)?\((?:AT_FDCWD, )?"([^"]+)".*\)\s*=\s*\d+', line)
        if not m:  # only successful opens are headers clang read
            continue
        # BCC compiles from inside the kernel tree: most paths are relative to it
        opened = os.path.normpath(os.path.join(merged, m.group(1)))
        if not opened.startswith(merged + "/") or not os.path.isfile(opened):
            continue
        target = dest / os.path.relpath(opened, merged)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.realpath(opened), target)
            kept += 1
    if kept == 0:
        sys.exit(f"rootfs: tracing the compile recorded no header under {merged}")
    compile_variants(source, flags, str(dest))  # the subset alone must compile every variant
    print(f"rootfs: {kept} header files of {args.release} at {dest}")


def main() -> None:
    p = argparse.ArgumentParser(prog="rootfs.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("assemble", help="a minimal root filesystem: packages, paths, their libraries")
    a.add_argument("out")
    a.add_argument("--package", action="append", default=[])
    a.add_argument("--path", action="append", default=[])
    a.add_argument("--library", action="append", default=[], help="a library loaded by soname (ctypes)")
    a.add_argument("--drop", action="append", default=[], help="glob of paths to leave out")
    h = sub.add_parser("headers", help="the kernel header subset BCC reads for bpf/xtrace.c")
    h.add_argument("out")
    h.add_argument("release")
    h.add_argument("--agent-src", default="/src/agent")
    h.add_argument("--work", default="/tmp/xtrace-headers")
    args = p.parse_args()
    assemble(args) if args.command == "assemble" else headers(args)


if __name__ == "__main__":
    main()
