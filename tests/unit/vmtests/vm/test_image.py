"""The image builder's decisions, without building anything: recipe hash, module order, what
is read from and kept of mmdebstrap's tar, the manifest, and the host checks."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from vmtests.vm import image
from vmtests.vm.errors import ImageError

# -- recipe_hash ------------------------------------------------------------------------------


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    copy = tmp_path / "recipe"
    shutil.copytree(image.RECIPE_DIR, copy)
    return copy


def test_recipe_hash_is_stable_and_short(recipe: Path) -> None:
    assert image.recipe_hash(recipe) == image.recipe_hash(recipe) == image.recipe_hash()
    assert len(image.recipe_hash(recipe)) == 16
    int(image.recipe_hash(recipe), 16)


@pytest.mark.parametrize("name", image.HASHED_FILES)
def test_recipe_hash_follows_the_files_that_shape_the_image(recipe: Path, name: str) -> None:
    before = image.recipe_hash(recipe)
    with (recipe / name).open("a") as f:
        f.write("extra\n")
    assert image.recipe_hash(recipe) != before


@pytest.mark.parametrize("name", ["init.sh", "guest.env", "initramfs-modules.txt"])
def test_per_boot_files_do_not_force_a_rebuild(recipe: Path, name: str) -> None:
    # initramfs-modules.txt keys each kernel layer instead: adding a kernel keeps the userland
    before = image.recipe_hash(recipe)
    with (recipe / name).open("a") as f:
        f.write("# edited\n")
    assert image.recipe_hash(recipe) == before


def test_recipe_version_is_part_of_the_hash(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = image.recipe_hash(recipe)
    monkeypatch.setattr(image, "RECIPE_VERSION", image.RECIPE_VERSION + "-next")
    assert image.recipe_hash(recipe) != before


def test_find_names_the_command_when_no_image_is_cached(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAPKIT_IMAGE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ImageError, match="vmtest image build"):
        image.find_userland(recipe)


# -- the root tar -----------------------------------------------------------------------------


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A pax tar shaped like mmdebstrap's: './'-prefixed names, merged /usr symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def _read_tar(data: bytes) -> tarfile.TarFile:
    return tarfile.TarFile(fileobj=io.BytesIO(data))


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


KVER = "6.1.0-1-cloud-amd64"
LONG_NAME = "./usr/share/" + "d" * 120 + "/file"  # needs a pax header of its own


@pytest.fixture
def root_tar() -> tarfile.TarFile:
    data = _tar(
        [
            _dir("./"),
            _link("./bin", "usr/bin"),
            _link("./lib", "usr/lib"),
            _link("./vmlinuz", "boot/vmlinuz-" + KVER),
            _dir("./boot/"),
            (f"./boot/vmlinuz-{KVER}", b"kernel"),
            _dir("./usr/"),
            ("./usr/bin/busybox", b"busybox"),
            _link("./usr/bin/sh", "/bin/busybox"),
            _dir(f"./usr/lib/modules/{KVER}/"),
            (f"./usr/lib/modules/{KVER}/modules.dep", b"kernel/loop.ko:\n"),
            _dir("./usr/lib/firmware/"),
            ("./usr/lib/firmware/blob.bin", b"fw"),
            ("./usr/lib/firmwarex", b"not firmware"),
            (LONG_NAME, b"long"),
        ]
    )
    return _read_tar(data)


def test_member_paths_are_relative_to_the_guests_root() -> None:
    assert image.member_path("./usr/bin/") == "usr/bin"
    assert image.member_path("./") == ""
    assert image.member_path("usr/../etc/passwd") == "etc/passwd"


def test_paths_resolve_through_merged_usr_links(root_tar: tarfile.TarFile) -> None:
    root = image.RootTar(root_tar)
    assert root.read("bin/busybox") == root.read("usr/bin/busybox") == b"busybox"
    assert root.read("/vmlinuz") == b"kernel"
    assert root.resolve("bin/sh") == "usr/bin/busybox"  # an absolute link, through /bin
    assert root.listdir("lib/modules") == [KVER]
    assert root.read(f"lib/modules/{KVER}/modules.dep") == b"kernel/loop.ko:\n"


def test_a_missing_file_is_an_image_error_that_names_it(root_tar: tarfile.TarFile) -> None:
    root = image.RootTar(root_tar)
    with pytest.raises(ImageError, match="no file usr/bin/fio"):
        root.read("usr/bin/fio")
    with pytest.raises(ImageError, match="no file boot"):
        root.read("boot")  # a directory is not a file


def test_a_symlink_loop_is_an_image_error() -> None:
    tar = _read_tar(_tar([_link("./a", "b"), _link("./b", "a")]))
    with pytest.raises(ImageError, match="too many symlinks"):
        image.RootTar(tar).read("a/x")


def test_boot_and_firmware_stay_out_of_the_squashfs() -> None:
    kept = ["", "usr", "usr/bin/busybox", "usr/lib/firmwarex", "bootstrap", "etc/boot"]
    dropped = ["boot", f"boot/vmlinuz-{KVER}", "usr/lib/firmware", "usr/lib/firmware/blob.bin"]
    assert [p for p in kept if image.in_squashfs(p)] == kept
    assert [p for p in dropped if image.in_squashfs(p)] == []


def test_the_squashfs_tar_is_the_kept_members_byte_for_byte(root_tar: tarfile.TarFile) -> None:
    out = io.BytesIO()
    image.RootTar(root_tar).copy_members(image.in_squashfs, out)
    copy = _read_tar(out.getvalue())
    names = [image.member_path(m.name) for m in copy.getmembers()]
    assert "usr/lib/firmwarex" in names and image.member_path(LONG_NAME) in names
    assert not [n for n in names if not image.in_squashfs(n)]
    original = {m.name: m for m in root_tar.getmembers()}
    for m in copy.getmembers():  # headers (pax included) and data as they were
        assert m.get_info() == original[m.name].get_info()
        if m.isfile():
            assert copy.extractfile(m).read() == root_tar.extractfile(original[m.name]).read()  # type: ignore[union-attr]


def test_keeping_everything_keeps_every_member(root_tar: tarfile.TarFile) -> None:
    """Negative control for the copy: with no filter nothing is lost, so the test above
    sees the excludes at work and not a copy that drops members by accident."""
    out = io.BytesIO()
    image.RootTar(root_tar).copy_members(lambda _path: True, out)
    copy = _read_tar(out.getvalue())
    assert copy.getnames() == root_tar.getnames()


# -- the manifest -----------------------------------------------------------------------------

DPKG_STATUS = """\
Package: fio
Status: install ok installed
Priority: optional
Version: 3.33-3
Description: flexible I/O tester
 Version: 9.9 is a line of the description, not a field

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u10

Package: removed-one
Status: deinstall ok config-files
Version: 1.0

Package: half-there
Status: install reinstreq half-installed
Version: 2.0
"""


def test_the_manifest_lists_installed_packages_sorted_by_name() -> None:
    assert image.manifest(DPKG_STATUS) == "fio\t3.33-3\nlibc6\t2.36-9+deb12u10\n"


def test_the_manifest_follows_the_status_file() -> None:
    """Negative control: installing the removed package changes the manifest."""
    changed = DPKG_STATUS.replace("deinstall ok config-files", "install ok installed")
    assert "removed-one\t1.0\n" in image.manifest(changed)


# -- the host checks --------------------------------------------------------------------------


def _host(euid: int = 1000, subuid: str = "alice:100000:65536\n", **kw: object) -> image.HostFacts:
    facts: dict[str, object] = {
        "euid": euid,
        "user": "alice",
        "subuid": subuid,
        "subgid": subuid,
        "missing_tools": frozenset(),
    }
    return image.HostFacts(**{**facts, **kw})  # type: ignore[arg-type]


def test_a_user_with_tools_and_subids_may_build() -> None:
    image.check_host(_host())
    image.check_host(_host(subuid="1000:100000:65536\n"))  # by uid works too


@pytest.mark.parametrize(
    "subuid", ["", "bob:100000:65536\n", "alice:100000:1000\n", "# alice:1:65536\n"]
)
def test_too_few_subids_name_the_usermod_that_fixes_it(subuid: str) -> None:
    with pytest.raises(ImageError, match=r"/etc/subuid grants alice .*usermod --add-subuids"):
        image.check_host(_host(subuid=subuid))


def test_subids_are_not_needed_as_root() -> None:
    image.check_host(_host(euid=0, subuid=""))


def test_a_missing_uidmap_names_its_package_for_a_user_only() -> None:
    with pytest.raises(ImageError, match=r"newuidmap not found.*apt-get install uidmap"):
        image.check_host(_host(missing_tools=frozenset({"newuidmap"})))
    image.check_host(_host(euid=0, missing_tools=frozenset({"newuidmap"})))


def test_a_missing_build_tool_names_its_package() -> None:
    with pytest.raises(ImageError, match=r"sqfstar not found.*squashfs-tools"):
        image.check_host(_host(euid=0, missing_tools=frozenset({"sqfstar"})))


def test_the_mode_is_root_only_for_root() -> None:
    assert image.mmdebstrap_mode(0) == "root"
    assert image.mmdebstrap_mode(1000) == "unshare"


def test_subid_ranges_add_up() -> None:
    assert image.subid_count("alice:100000:40000\nalice:200000:30000\n", "alice", 1000) == 70000


# -- a failed build ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (OSError(28, "No space left on device"), "OSError: .*No space left"),
        (ImageError("sqfstar failed (exit 1)"), "sqfstar failed"),
    ],
)
def test_a_failed_build_leaves_no_folder_and_no_traceback(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception, message: str
) -> None:
    def fail(work: Path, _recipe: Path, _say: image.Say) -> None:
        (work / "scratch").mkdir()
        (work / "scratch" / "root.tar").write_bytes(b"half")
        raise exc

    cache = tmp_path / "cache"
    monkeypatch.setenv("SNAPKIT_IMAGE_CACHE", str(cache))
    monkeypatch.setattr(image, "check_host", lambda _host: None)
    monkeypatch.setattr(image, "_build_into", fail)
    with pytest.raises(ImageError, match=message):
        image.build(recipe=recipe, say=lambda _msg: None)
    assert sorted(p.name for p in cache.iterdir()) == [".lock"]


def test_the_host_is_checked_before_anything_is_built(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAPKIT_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(image.HostFacts, "current", classmethod(lambda _cls: _host(subuid="")))
    monkeypatch.setattr(image, "_build_into", lambda *_args: pytest.fail("built anyway"))
    with pytest.raises(ImageError, match="/etc/subuid grants alice 0 ids"):
        image.build(recipe=recipe, say=lambda _msg: None)


def test_sqfstar_runs_as_root_of_its_own_namespace_for_a_user(tmp_path: Path) -> None:
    """The squashfs's root directory gets sqfstar's own uid, whatever the tar says."""
    as_root = image.sqfstar_argv(tmp_path / "root.squashfs", 0)
    assert as_root[0] == "sqfstar" and "-root-mode" in as_root
    assert image.sqfstar_argv(tmp_path / "root.squashfs", 1000) == [
        "unshare",
        "--map-root-user",
        *as_root,
    ]


def test_the_suggested_range_overlaps_no_granted_one() -> None:
    assert image.free_subid_start("") == 100000
    assert image.free_subid_start("bob:100000:65536\ncarol:165536:65536\n") == 231072
    with pytest.raises(image.ImageError, match=r"--add-subuids 165536-231071 "):
        image.check_host(_host(subuid="bob:100000:65536\n"))


def test_a_userland_with_build_tools_is_refused_and_a_clean_one_passes() -> None:
    """The booted root must hold no compiler or kernel headers (ZFS's module is built apart):
    the guard refuses a manifest that lists one, and is quiet on the real recipe's kind."""
    clean = (
        "zfsutils-linux\t2.1.11-1+deb12u1\nlibzfs4linux\t2.1.11-1+deb12u1\nkmod\t30+20221128-1\n"
    )
    image.refuse_build_tools(clean)
    for bad in (
        "gcc-12\t12.2.0-14\n",
        "zfs-dkms\t2.1.11\n",
        "linux-headers-6.1.0-57-cloud-amd64\t1\n",
    ):
        with pytest.raises(ImageError, match="build tools"):
            image.refuse_build_tools(clean + bad)


def test_an_image_with_zfs_modules_boots_them_and_says_so_in_its_key(tmp_path: Path) -> None:
    from vmtests.vm.kernel.layer import Layer

    layer = Layer(tmp_path / "kernel-abc")
    plain = image.Image(tmp_path / "u1", layer)
    assert plain.modules_disk == layer.modules_squashfs
    disk = layer.root / "zfs-0123" / "modules.squashfs"
    with_zfs = image.Image(tmp_path / "u1", layer, disk)
    assert with_zfs.modules_disk == disk
    assert with_zfs.key == plain.key + "+zfs-0123"
