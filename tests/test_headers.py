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
