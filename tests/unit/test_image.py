"""Image recipe hashing and initramfs module order, without building anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vmtests import image

MODULES_DEP = """\
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/persistent-data/dm-persistent-data.ko: kernel/drivers/md/dm-bufio.ko
kernel/drivers/md/dm-snapshot.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-thin-pool.ko: kernel/drivers/md/persistent-data/dm-persistent-data.ko \
kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/block/loop.ko:
kernel/drivers/virtio/virtio_mmio.ko:
"""


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    # modules.dep has no line continuations; the backslash above only keeps the source short.
    (tmp_path / "modules.dep").write_text(MODULES_DEP.replace("\\\n", ""))
    return tmp_path


def names(paths: list[Path]) -> list[str]:
    return [p.name.removesuffix(".ko") for p in paths]


def test_dependencies_come_first_and_each_module_once(modules: Path) -> None:
    order = names(image.module_load_order(modules, ["dm_snapshot", "dm_thin_pool", "loop"]))
    assert order == [
        "dm-mod",
        "dm-bufio",
        "dm-snapshot",
        "dm-persistent-data",
        "dm-thin-pool",
        "loop",
    ]
    for mod, deps in [("dm-thin-pool", ["dm-persistent-data", "dm-bufio", "dm-mod"])]:
        assert all(order.index(d) < order.index(mod) for d in deps)


def test_dashes_and_underscores_name_the_same_module(modules: Path) -> None:
    assert names(image.module_load_order(modules, ["dm-mod", "virtio-mmio"])) == [
        "dm-mod",
        "virtio_mmio",
    ]


def test_paths_are_under_the_modules_folder(modules: Path) -> None:
    [path] = image.module_load_order(modules, ["loop"])
    assert path == modules / "kernel/drivers/block/loop.ko"


def test_unknown_module_is_an_error_that_names_it(modules: Path) -> None:
    with pytest.raises(image.ImageError, match="ext4 is not in this kernel"):
        image.module_load_order(modules, ["loop", "ext4"])


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


@pytest.mark.parametrize("name", ["init.sh", "guest.env"])
def test_per_boot_files_do_not_force_a_rebuild(recipe: Path, name: str) -> None:
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
    with pytest.raises(image.ImageError, match="vmtest image build"):
        image.find(recipe)
