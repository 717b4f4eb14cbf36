"""Kernel specs, files, modules checks, user trees and layer keys, on small synthetic files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.vmtests.vm.kernel import synth
from vmtests.vm.errors import KernelError
from vmtests.vm.kernel import files, layer, modules, spec, usertree
from vmtests.vm.kernel.spec import DebianKernel, UserKernel

R61 = "6.1.0-57-cloud-amd64"
R612 = "6.12.118+deb13-cloud-amd64"

# -- spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("debian:trixie", DebianKernel("trixie", "cloud-amd64")),
        ("debian:bookworm/cloud", DebianKernel("bookworm", "cloud-amd64")),
        ("debian:bookworm-backports/amd64", DebianKernel("bookworm-backports", "amd64")),
        ("debian:trixie/generic", DebianKernel("trixie", "amd64")),
        ("debian:bookworm/6.12-cloud-amd64", DebianKernel("bookworm", "6.12-cloud-amd64")),
    ],
)
def test_debian_specs_parse_to_a_canonical_form(text: str, want: DebianKernel) -> None:
    got = spec.parse(text)
    assert got == want
    assert spec.parse(str(got)) == got  # the canonical form parses back to itself


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("debian:Trixie", "not a Debian suite"),
        ("debian:trixie/arm64", "the flavour is cloud, amd64"),
        ("/no/such/kernel", "no such file or directory"),
        ("", "an empty kernel spec"),
    ],
)
def test_bad_specs_are_refused_in_one_line(text: str, says: str) -> None:
    with pytest.raises(KernelError, match=says) as err:
        spec.parse(text)
    assert "\n" not in str(err.value)


def test_no_spec_means_the_recipes_suite_and_the_env_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(spec.ENV, raising=False)
    assert spec.chosen(None, default_suite="bookworm") == DebianKernel("bookworm")
    monkeypatch.setenv(spec.ENV, "debian:trixie")
    assert spec.chosen(None, default_suite="bookworm") == DebianKernel("trixie")
    assert spec.chosen("debian:sid", default_suite="bookworm") == DebianKernel("sid")


def test_a_path_spec_keeps_its_modules(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(b"x")
    got = spec.parse(str(tmp_path / "bzImage"), modules=tmp_path)
    assert got == UserKernel(tmp_path / "bzImage", tmp_path)
    with pytest.raises(KernelError, match="--modules goes with a kernel PATH"):
        spec.parse("debian:trixie", modules=tmp_path)


def test_a_kernel_list_keeps_order_and_drops_repeats() -> None:
    assert spec.split_list("debian:bookworm, debian:trixie,debian:bookworm") == [
        "debian:bookworm",
        "debian:trixie",
    ]


# -- files --------------------------------------------------------------------------------------


def test_the_release_of_a_bzimage_comes_from_its_setup_header(tmp_path: Path) -> None:
    (tmp_path / "bz").write_bytes(synth.bzimage(R612, b"\x28\xb5\x2f\xfdpayload"))
    assert files.kernel_release(tmp_path / "bz") == R612
    assert files.BzImage.read(tmp_path / "bz").payload == b"\x28\xb5\x2f\xfdpayload"
    assert files.compression(files.BzImage.read(tmp_path / "bz").payload) == "zstd"


def test_the_release_and_pvh_note_of_a_vmlinux(tmp_path: Path) -> None:
    (tmp_path / "vmlinux").write_bytes(synth.vmlinux(R61))
    assert files.kernel_release(tmp_path / "vmlinux") == R61
    assert files.has_pvh_note(synth.vmlinux(R61))
    assert not files.has_pvh_note(synth.vmlinux(R61, pvh=False))


def test_an_xz_payload_is_extracted_in_python() -> None:
    import lzma

    elf = synth.vmlinux(R61)
    assert files.decompress_payload(lzma.compress(elf)) == elf


def test_a_file_that_is_no_kernel_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello" * 200)
    with pytest.raises(KernelError, match="not a kernel"):
        files.kernel_release(tmp_path / "notes.txt")


def test_a_module_names_the_release_it_was_built_for(tmp_path: Path) -> None:
    (tmp_path / "dm-mod.ko.xz").write_bytes(synth.module(R61, xz=True))
    assert files.module_release(tmp_path / "dm-mod.ko.xz") == R61
    assert files.module_name("kernel/drivers/md/dm-snapshot.ko.zst") == "dm_snapshot"


# -- modules ------------------------------------------------------------------------------------


def test_a_complete_tree_passes_with_built_ins_counted(tmp_path: Path) -> None:
    loadable = ["dm_mod", "dm_snapshot", "loop", "squashfs", "overlay", "virtio_blk"]
    moddir = synth.modules_tree(tmp_path, R612, loadable, ["virtio_mmio", "virtio_console"])
    modules.check(R612, moddir)


def test_a_missing_needed_module_is_named(tmp_path: Path) -> None:
    moddir = synth.modules_tree(tmp_path, R612, ["dm_mod", "loop"], ["virtio_mmio"])
    with pytest.raises(KernelError, match=r"neither built in nor as a module: virtio_blk.*dm_snap"):
        modules.check(R612, moddir)


def test_a_renamed_tree_of_another_build_is_caught_by_vermagic(tmp_path: Path) -> None:
    moddir = synth.modules_tree(tmp_path, R61, ["dm_mod"])
    renamed = moddir.rename(moddir.with_name(R612))
    with pytest.raises(KernelError, match=f"dm-mod.ko.xz was built for {R61}, the kernel is"):
        modules.check(R612, renamed)


def test_a_config_lacking_a_need_is_named() -> None:
    config = "CONFIG_BLK_DEV_DM=y\nCONFIG_DM_SNAPSHOT=m\n# CONFIG_SQUASHFS_LZ4 is not set\n"
    lacking = modules.missing_from_config(config)
    assert "CONFIG_SQUASHFS_LZ4 (lz4 squashfs)" in lacking
    assert not any(x.startswith("CONFIG_DM_SNAPSHOT ") for x in lacking)


# -- a user's tree ------------------------------------------------------------------------------

NEEDED = [
    "dm_mod",
    "dm_snapshot",
    "loop",
    "squashfs",
    "overlay",
    "virtio_blk",
    "virtio_mmio",
    "virtio_console",
]


def _tree(tmp_path: Path, release: str) -> Path:
    tree = tmp_path / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    (tree / "arch/x86/boot/bzImage").write_bytes(synth.bzimage(release))
    return tree


def test_a_build_tree_with_a_modules_install_tree_resolves(tmp_path: Path) -> None:
    tree = _tree(tmp_path, R612)
    synth.modules_tree(tmp_path / "mods", R612, NEEDED)
    got = usertree.resolve(UserKernel(tree, tmp_path / "mods"), tmp_path / "staging")
    assert (got.release, got.bzimage) == (R612, tree / "arch/x86/boot/bzImage")
    assert got.moddir == tmp_path / "mods/lib/modules" / R612


def test_a_modules_tree_of_another_kernel_is_refused_in_one_line(tmp_path: Path) -> None:
    tree = _tree(tmp_path, R612)
    synth.modules_tree(tmp_path / "mods", R61, NEEDED)
    with pytest.raises(KernelError) as err:
        usertree.resolve(UserKernel(tree, tmp_path / "mods"), tmp_path / "staging")
    assert str(err.value) == (
        f"{tmp_path / 'mods'} holds modules for {R61}, not for {R612}: run "
        f"'make modules_install INSTALL_MOD_PATH={tmp_path / 'mods'}' for this kernel"
    )


def test_a_stale_tree_and_a_vmlinux_without_pvh_are_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path, R612)
    (tree / "include/config").mkdir(parents=True)
    (tree / "include/config/kernel.release").write_text("6.13.0-rc1\n")
    with pytest.raises(KernelError, match=r"configured for 6\.13\.0-rc1 but its kernel is"):
        usertree.resolve(UserKernel(tree), tmp_path / "s")
    (tmp_path / "vmlinux").write_bytes(synth.vmlinux(R612, pvh=False))
    with pytest.raises(KernelError, match="no PVH entry"):
        usertree.resolve(UserKernel(tmp_path / "vmlinux"), tmp_path / "s")


def test_a_kernel_without_any_modules_tree_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="no modules tree found: pass --modules DIR"):
        usertree.resolve(UserKernel(_tree(tmp_path, R612)), tmp_path / "s")


# -- layer keys ---------------------------------------------------------------------------------


def test_a_debian_layer_key_follows_the_spec_and_the_initramfs_list() -> None:
    a = layer.key(DebianKernel("bookworm"), ["loop"])
    assert a == layer.key(DebianKernel("bookworm"), ["loop"])
    assert a != layer.key(DebianKernel("trixie"), ["loop"])
    assert a != layer.key(DebianKernel("bookworm", "amd64"), ["loop"])
    assert a != layer.key(DebianKernel("bookworm"), ["loop", "dm_mod"])


def test_a_user_layer_key_follows_the_bytes_of_kernel_and_modules(tmp_path: Path) -> None:
    tree = _tree(tmp_path, R612)
    synth.modules_tree(tmp_path / "mods", R612, NEEDED)
    user = UserKernel(tree, tmp_path / "mods")
    first = layer.key(user, ["loop"], usertree.resolve(user, tmp_path / "s"))
    assert first == layer.key(user, ["loop"], usertree.resolve(user, tmp_path / "s"))
    (tmp_path / "mods/lib/modules" / R612 / "kernel/loop.ko.xz").write_bytes(
        synth.module(R612, xz=True) + b"rebuilt"
    )
    assert layer.key(user, ["loop"], usertree.resolve(user, tmp_path / "s")) != first
