"""Kernel header resolution: finds headers BCC can compile the XDP program against.

Order: the running kernel's headers (/lib/modules/$(uname -r)/build, BCC's default; in a pod the
host's /lib/modules and /usr/src may be mounted at the same paths), else the headers whose version
is closest to the running kernel (an XDP program only needs stable UAPI headers), the host's on a
tie with the image's, else AgentFailure naming the fix.

The agent image carries a fallback (/usr/share/xtrace/kernel-headers/<release>, $XTRACE_KERNEL_HEADERS):
the few hundred files of one Debian linux-headers release that compiling bpf/xtrace.c reads
(tools/rootfs.py picks them at build time), one complete tree per release. So a node with no
headers at all (Container-Optimized OS, Bottlerocket, Talos, Flatcar...) still compiles.
`summary()` says in one line which headers a compile uses (`xtrace-agent -l`, compile errors).

Debian and Ubuntu split headers into an arch tree (generated config, Makefile) and a common tree
(the sources). BCC_KERNEL_SOURCE takes one directory, so we build a merged symlink tree in a cache
directory: common first, the arch tree overriding.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xtrace_agent import environ
from xtrace_agent.errors import AgentFailure

ENV = environ.KERNEL_SOURCE.name  # the knobs and their defaults: environ.py
FIX = ("no kernel headers found for kernel {release}: install linux-headers-{release} (or linux-headers-amd64), "
       "or mount the host's /lib/modules and /usr/src into the pod")


@dataclass(frozen=True)
class Headers:
    """One usable header set: `trees` are merged in order (later ones override); `origin` is
    "host" (installed or mounted) or "image" (the fallback shipped with the agent)."""

    release: str
    trees: tuple[str, ...]
    origin: str = "host"

    @property
    def single(self) -> bool:
        return len(self.trees) == 1


def version_tuple(release: str) -> tuple[int, ...]:
    """(6, 1, 0) from '6.1.0-56-amd64'; () when there is no leading version."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return tuple(int(x or 0) for x in m.groups()) if m else ()


def distance(a: str, b: str) -> tuple[int, ...]:
    """Sort key: how far release a is from release b (major, then minor, then patch)."""
    va, vb = version_tuple(a), version_tuple(b)
    if not va or not vb:
        return (1 << 30,)
    return tuple(abs(x - y) for x, y in zip(va, vb, strict=True)) + (0 if va >= vb else 1,)


def _is_arch_tree(path: Path) -> bool:
    return (path / "include" / "generated").is_dir() or (path / "include" / "config").is_dir()


def _is_complete(path: Path) -> bool:
    return (path / "include" / "linux").is_dir() and (path / "arch").is_dir()


def _companion(arch: Path) -> Path | None:
    """The common tree that completes a split arch tree, or None when the tree is complete itself."""
    if _is_complete(arch):
        return None
    try:
        first = (arch / "Makefile").read_text(errors="replace").splitlines()[:5]
    except OSError:
        first = []
    for line in first:  # Debian: "include /usr/src/linux-headers-X-common/Makefile"
        m = re.match(r"\s*include\s+(\S+)/Makefile\s*$", line)
        if m and Path(m.group(1)).is_dir():
            return Path(m.group(1))
    name = arch.name
    base = name.rsplit("-", 1)[0]
    for guess in (f"{base}-common", base):  # Debian naming, Ubuntu naming
        cand = arch.parent / guess
        if cand != arch and cand.is_dir():
            return cand
    return None


def candidates(modules_root: str = "/lib/modules", src_root: str = "/usr/src") -> list[Headers]:
    """Every usable header set installed, whatever its version."""
    found: dict[tuple[str, ...], Headers] = {}
    mods = Path(modules_root)
    if mods.is_dir():
        for rel in sorted(os.listdir(mods)):
            build, source = mods / rel / "build", mods / rel / "source"
            if not build.is_dir():
                continue
            trees = [build.resolve()]
            if source.is_dir() and source.resolve() != trees[0]:
                trees.insert(0, source.resolve())
            elif not _is_complete(trees[0]):
                comp = _companion(trees[0])
                if comp is None:
                    continue
                trees.insert(0, comp.resolve())
            key = tuple(map(str, trees))
            found.setdefault(key, Headers(rel, key))
    src = Path(src_root)
    dirs = [src / d for d in sorted(os.listdir(src))] if src.is_dir() else []
    if (src / "kernels").is_dir():  # Fedora/RHEL: /usr/src/kernels/<release>, complete trees
        dirs += [src / "kernels" / d for d in sorted(os.listdir(src / "kernels"))]
    for d in dirs:
        if not d.is_dir() or not _is_arch_tree(d):
            continue
        comp = _companion(d)
        if comp is None and not _is_complete(d):
            continue
        trees = tuple(str(p.resolve()) for p in ([comp] if comp else []) + [d])
        rel = d.name.removeprefix("linux-headers-")
        if not any(h.trees == trees for h in found.values()):
            found[trees] = Headers(rel, trees)
    return list(found.values())


def fallbacks(root: str | None = None) -> list[Headers]:
    """The complete trees shipped in the image, one directory per release."""
    base = Path(root or environ.KERNEL_HEADERS.get())
    if not base.is_dir():
        return []
    return [Headers(d.name, (str(d),), "image") for d in sorted(base.iterdir()) if (d / "include").is_dir()]


def choose(release: str, modules_root: str = "/lib/modules", src_root: str = "/usr/src",
           fallback_root: str | None = None) -> Headers | None:
    """The running kernel's own headers if present, else the closest version (the host's on a tie), else None."""
    own = Path(modules_root) / release / "build"
    if own.is_dir():
        return Headers(release, (str(own),))
    found = candidates(modules_root, src_root) + fallbacks(fallback_root)
    if not found:
        return None
    return min(found, key=lambda h: (distance(h.release, release), h.origin != "host", h.release))


def summary(release: str | None = None, modules_root: str = "/lib/modules", src_root: str = "/usr/src",
            fallback_root: str | None = None, environ: dict | None = None) -> str:
    """Which kernel headers a compile here uses, in one line for people."""
    given = (os.environ if environ is None else environ).get(ENV)
    if given and os.path.isdir(given):
        return f"{given} (BCC_KERNEL_SOURCE)"
    release = release or os.uname().release
    h = choose(release, modules_root, src_root, fallback_root)
    if h is None:
        return f"none for kernel {release}"
    where = "the image's fallback" if h.origin == "image" else "the host's"
    closeness = "the running kernel's own" if h.release == release else f"closest to the running {release}"
    return f"{h.release} from {where} {h.trees[-1]} ({closeness})"


def merge(dst: Path, trees: list[Path]) -> None:
    """Symlink tree of `trees` at dst: a name in several trees is merged when all are directories,
    otherwise the last tree's entry wins."""
    dst.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[Path]] = {}
    for tree in trees:
        for name in sorted(os.listdir(tree)):
            names.setdefault(name, []).append(tree / name)
    for name, paths in names.items():
        if len(paths) > 1 and all(p.is_dir() for p in paths):
            merge(dst / name, [p.resolve() for p in paths])
        else:
            os.symlink(paths[-1].resolve(), dst / name)


def merged_tree(headers: Headers, cache_dir: str | None = None) -> str:
    """A directory BCC_KERNEL_SOURCE can point at: the tree itself, or a cached merged tree."""
    if headers.single:
        return headers.trees[0]
    cache = Path(cache_dir or environ.HEADERS_CACHE.get().format(uid=os.geteuid()))
    target = cache / re.sub(r"[^A-Za-z0-9._-]", "_", headers.release)
    stamp = target / ".xtrace-trees"
    want = "\n".join(headers.trees)
    if stamp.is_file() and stamp.read_text() == want and target.stat().st_uid == os.geteuid():
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    st = cache.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"{cache} is not owned by this user or is writable by others; set {environ.HEADERS_CACHE.name}")
    # build beside it and rename: agents starting at the same time never see a half-made tree
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the tree is shared by whoever compiles
    try:
        merge(tmp, [Path(t) for t in headers.trees])
        (tmp / ".xtrace-trees").write_text(want)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another agent won the race with the same content
            if not (stamp.is_file() and stamp.read_text() == want):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def resolve(release: str | None = None, modules_root: str = "/lib/modules", src_root: str = "/usr/src",
            cache_dir: str | None = None, environ: dict | None = None, fallback_root: str | None = None) -> str | None:
    """Make BCC find kernel headers; returns the BCC_KERNEL_SOURCE it set (None: BCC's default).

    A BCC_KERNEL_SOURCE already set to an existing directory is respected.
    """
    env = os.environ if environ is None else environ
    given = env.get(ENV)
    if given and os.path.isdir(given):
        return given
    release = release or os.uname().release
    headers = choose(release, modules_root, src_root, fallback_root)
    if headers is None:
        raise AgentFailure(FIX.format(release=release))
    if headers.release == release and headers.trees == (str(Path(modules_root) / release / "build"),):
        env.pop(ENV, None)
        return None
    try:
        path = merged_tree(headers, cache_dir)
    except OSError as e:
        raise AgentFailure(f"cannot prepare kernel headers {headers.release} in the cache: {e}") from None
    env[ENV] = path
    return path
