"""Kernel header resolution on fake trees: Debian's split layout, the running kernel's own headers,
the closest version, Fedora's complete trees, and the one-line failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xtrace_agent.errors import AgentFailure
from xtrace_agent.xdp import headers


def arch_tree(root: Path, name: str, common: Path | None = None) -> Path:
    """A Debian-style arch tree (generated config, Makefile including the common tree)."""
    d = root / "usr/src" / name
    (d / "include/generated").mkdir(parents=True)
    (d / "include/generated/autoconf.h").write_text("#define CONFIG_X 1\n")
    (d / "arch/x86/include/generated").mkdir(parents=True)
    (d / "arch/x86/include/generated/arch-only.h").write_text("")
    (d / "Makefile").write_text(f"include {common}/Makefile\n" if common else "# arch\n")
    return d


def common_tree(root: Path, name: str) -> Path:
    d = root / "usr/src" / name
    (d / "include/linux").mkdir(parents=True)
    (d / "include/linux/kconfig.h").write_text("")
    (d / "arch/x86/include/asm").mkdir(parents=True)
    (d / "arch/x86/include/asm/common-only.h").write_text("")
    (d / "Makefile").write_text("# common\n")
    return d


def debian(root: Path, release: str, link: bool = True) -> tuple[Path, Path]:
    base = release.rsplit("-", 1)[0]
    common = common_tree(root, f"linux-headers-{base}-common")
    arch = arch_tree(root, f"linux-headers-{release}", common)
    if link:
        mods = root / "lib/modules" / release
        mods.mkdir(parents=True)
        os.symlink(arch, mods / "build")
        os.symlink(common, mods / "source")
    return arch, common


def resolve(root: Path, release: str, env: dict | None = None):
    env = {} if env is None else env
    path = headers.resolve(release, str(root / "lib/modules"), str(root / "usr/src"), str(root / "cache"), env)
    return path, env


def test_running_kernel_headers_use_bcc_default(tmp_path):
    debian(tmp_path, "6.1.0-56-amd64")
    path, env = resolve(tmp_path, "6.1.0-56-amd64", {"BCC_KERNEL_SOURCE": "/nonexistent"})
    assert path is None and "BCC_KERNEL_SOURCE" not in env


def test_other_version_gets_a_merged_tree(tmp_path):
    arch, common = debian(tmp_path, "6.1.0-56-amd64")
    path, env = resolve(tmp_path, "6.18.44-fc")
    assert env["BCC_KERNEL_SOURCE"] == path
    merged = Path(path)
    # common first, the arch tree overriding: both halves are visible, merged where both have a dir
    assert (merged / "include/linux/kconfig.h").resolve() == (common / "include/linux/kconfig.h").resolve()
    assert (merged / "include/generated/autoconf.h").exists()
    assert (merged / "arch/x86/include/asm/common-only.h").exists()
    assert (merged / "arch/x86/include/generated/arch-only.h").exists()
    assert (merged / "Makefile").resolve() == (arch / "Makefile").resolve()
    # a second resolve reuses the cached tree
    assert resolve(tmp_path, "6.18.44-fc")[0] == path


def test_closest_version_wins(tmp_path):
    debian(tmp_path, "5.10.0-30-amd64")
    debian(tmp_path, "6.1.0-56-amd64")
    debian(tmp_path, "6.12.9-1-amd64")
    path, _ = resolve(tmp_path, "6.18.44-fc")
    assert "6.12.9" in os.readlink(Path(path) / "Makefile")
    path, _ = resolve(tmp_path, "6.2.0-1-generic")
    assert "6.1.0" in os.readlink(Path(path) / "Makefile")


def test_headers_under_usr_src_without_lib_modules(tmp_path):
    """A pod with only /usr/src mounted: the arch tree names its common tree in its Makefile."""
    debian(tmp_path, "6.1.0-56-amd64", link=False)
    path, _ = resolve(tmp_path, "6.18.44")
    assert (Path(path) / "include/linux/kconfig.h").exists()
    assert (Path(path) / "include/generated/autoconf.h").exists()


def test_ubuntu_naming(tmp_path):
    common = common_tree(tmp_path, "linux-headers-5.15.0-91")
    arch_tree(tmp_path, "linux-headers-5.15.0-91-generic")
    path, _ = resolve(tmp_path, "6.8.0-1-generic")
    assert (Path(path) / "include/linux/kconfig.h").resolve() == (common / "include/linux/kconfig.h").resolve()


def test_complete_tree_used_directly(tmp_path):
    d = tmp_path / "usr/src/kernels/5.14.0-362.el9.x86_64"
    (d / "include/generated").mkdir(parents=True)
    (d / "include/linux").mkdir(parents=True)
    (d / "arch/x86").mkdir(parents=True)
    path, env = resolve(tmp_path, "5.14.0-400.el9.x86_64")
    assert path == str(d.resolve()) and env["BCC_KERNEL_SOURCE"] == path


def test_a_common_tree_alone_is_not_enough(tmp_path):
    common_tree(tmp_path, "linux-headers-6.1.0-56-common")
    with pytest.raises(AgentFailure) as e:
        resolve(tmp_path, "6.18.44")
    assert "linux-headers-6.18.44" in str(e.value) and "/lib/modules" in str(e.value)
    assert "\n" not in str(e.value)


def test_no_headers_names_the_fix(tmp_path):
    with pytest.raises(AgentFailure) as e:
        resolve(tmp_path, "6.18.44-fc-v669")
    msg = str(e.value)
    assert "install linux-headers-6.18.44-fc-v669" in msg and "linux-headers-amd64" in msg
    assert "mount the host's /lib/modules and /usr/src" in msg


def test_existing_bcc_kernel_source_is_respected(tmp_path):
    given = tmp_path / "mine"
    given.mkdir()
    path, env = resolve(tmp_path, "6.18.44", {"BCC_KERNEL_SOURCE": str(given)})
    assert path == str(given)


def test_version_distance():
    assert headers.version_tuple("6.1.0-56-amd64") == (6, 1, 0)
    assert headers.version_tuple("garbage") == ()
    assert headers.distance("6.12.0", "6.18.44") < headers.distance("6.1.0", "6.18.44")
    assert headers.distance("6.17.0", "6.18.0") < headers.distance("5.18.0", "6.18.0")


def image_fallback(root: Path, release: str) -> Path:
    """The agent image's fallback: one complete (subset) tree per release."""
    d = root / "fallback" / release
    (d / "include/linux").mkdir(parents=True)
    (d / "include/linux/kconfig.h").write_text("")
    (d / "arch/x86/include/generated").mkdir(parents=True)
    return d


def test_image_fallback_when_the_host_has_no_headers(tmp_path):
    fb = image_fallback(tmp_path, "6.1.0-41-amd64")
    env: dict = {}
    path = headers.resolve("6.18.44-fc", str(tmp_path / "lib/modules"), str(tmp_path / "usr/src"),
                           str(tmp_path / "cache"), env, fallback_root=str(tmp_path / "fallback"))
    # a complete tree: used in place, no merged copy needed (the pod's root filesystem is read-only)
    assert path == str(fb) and env["BCC_KERNEL_SOURCE"] == str(fb)
    assert not (tmp_path / "cache").exists()
    line = headers.summary("6.18.44-fc", str(tmp_path / "lib/modules"), str(tmp_path / "usr/src"),
                           str(tmp_path / "fallback"), {})
    assert line == f"6.1.0-41-amd64 from the image's fallback {fb} (closest to the running 6.18.44-fc)"


def test_host_headers_win_a_tie_and_lose_to_a_closer_fallback(tmp_path):
    debian(tmp_path, "6.1.0-57-amd64")
    image_fallback(tmp_path, "6.1.0-41-amd64")
    args = (str(tmp_path / "lib/modules"), str(tmp_path / "usr/src"), str(tmp_path / "fallback"))
    assert headers.choose("6.18.44", *args).origin == "host"  # same 6.1.0 distance: the host's
    assert headers.choose("6.1.0-57-amd64", *args).trees == (str(tmp_path / "lib/modules/6.1.0-57-amd64/build"),)
    image_fallback(tmp_path, "6.12.9-1-amd64")
    chosen = headers.choose("6.18.44", *args)
    assert (chosen.origin, chosen.release) == ("image", "6.12.9-1-amd64")
    own = headers.summary("6.1.0-57-amd64", *args, environ={})
    assert own.startswith("6.1.0-57-amd64 from the host's ") and own.endswith("(the running kernel's own)")


def test_summary_names_a_given_tree_and_no_headers(tmp_path):
    assert headers.summary("6.18.44", environ={"BCC_KERNEL_SOURCE": str(tmp_path)}) == \
        f"{tmp_path} (BCC_KERNEL_SOURCE)"
    empty = str(tmp_path / "none")
    assert headers.summary("6.18.44", empty, empty, empty, {}) == "none for kernel 6.18.44"


def test_a_compile_error_names_the_headers_it_was_compiled_against():
    from xtrace_agent.xdp import compiler

    err = (f"{compiler.HEADERS_LINE}6.1.0-41-amd64 from the image's fallback /f (closest to the running 6.18)\n"
           "/virtual/main.c:3:10: fatal error: 'linux/nope.h' file not found\n"
           "xtrace-compiler: Failed to compile BPF module b'/x.c'\n")
    assert compiler.summarize(err, 1) == ("compile error: 'linux/nope.h' file not found (kernel headers: "
                                          "6.1.0-41-amd64 from the image's fallback /f (closest to the running 6.18))")


@pytest.mark.parametrize("own_build", [True, False], ids=["own-build-tree", "usr-src-only"])
def test_mounted_host_headers_the_running_kernels_own_first(tmp_path, own_build):
    """The two host layouts the image test meets with /lib/modules and /usr/src mounted into the
    image (whose fallback is one Debian 6.1 tree): a host with the running kernel's own build tree
    uses it, whatever else /usr/src and the fallback hold; a host with only another kernel's
    headers under /usr/src uses those (the host's wins a tie with the image's fallback)."""
    running = "6.18.44-amd64"
    debian(tmp_path, "6.1.0-57-amd64")  # an older kernel's headers, linked from its /lib/modules
    if own_build:
        debian(tmp_path, running)
    image_fallback(tmp_path, "6.1.0-41-amd64")
    mods, src, fb = str(tmp_path / "lib/modules"), str(tmp_path / "usr/src"), str(tmp_path / "fallback")
    chosen = headers.choose(running, mods, src, fb)
    line = headers.summary(running, mods, src, fb, {})
    if own_build:
        own = f"{mods}/{running}/build"
        assert chosen == headers.Headers(running, (own,), "host")
        assert line == f"{running} from the host's {own} (the running kernel's own)"
        assert headers.resolve(running, mods, src, str(tmp_path / "cache"), {}, fb) is None  # BCC's default
    else:
        assert (chosen.origin, chosen.release) == ("host", "6.1.0-57-amd64")
        assert line == (f"6.1.0-57-amd64 from the host's {src}/linux-headers-6.1.0-57-amd64 "
                        f"(closest to the running {running})")
