"""Stacked origins (issue 19) on the fakes: walking the stack, and the dm method wrapped in it.

The walk reads a fake sysfs tree and the fake dm's tables; the wrapped method runs on the
fake world of tests/unit/fakes.py, where every side effect can be made to fail: a failure at
any step of a stacked create, merge start or discard must leave the world as it was, and the
key must appear in no table text, record or plan text, only in the tables the fake kernel
holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapkit.dm.table import Crypt, DevNum, Linear, Secret, Table, Thin
from snapkit.errors import RefusedError
from snapkit.host.stack import Kind, Layer, Stack, classify, resolve_stack
from snapkit.host.target import BlockInfo
from snapkit.methods.dm.snapshot import DmMethod
from snapkit.methods.stack import STACK_KEY
from snapkit.methods.stack import layers as L
from snapkit.methods.stack.method import StackedMethod, info_of, shown, wrap
from snapkit.model import CreateRequest, Target
from snapkit.plan import PlanError, apply
from tests.unit.fakes import SIZE, World, make_world

KEY = "f7d66be7bb1f5f76bc224981709a31be9ca2eb4821ff388656ac330c82fc5103"
CIPHER = "aes-xts-plain64"


def _info(dev: DevNum, kname: str, dm: str | None = None, uuid: str | None = None) -> BlockInfo:
    return BlockInfo(dev, kname, SIZE, None, dm, uuid, (), False)


# -- the walk -----------------------------------------------------------------------------------


def _sysfs(root: Path, dev: DevNum, kname: str, dm: tuple[str, str] | None = None) -> None:
    node = root / "devices" / kname
    node.mkdir(parents=True)
    (node / "size").write_text(f"{SIZE}\n")
    if dm:
        (node / "dm").mkdir()
        (node / "dm" / "name").write_text(dm[0] + "\n")
        (node / "dm" / "uuid").write_text(dm[1] + "\n")
    (root / "dev").mkdir(exist_ok=True)
    (root / "dev" / str(dev)).symlink_to(node)


def test_the_walk_goes_through_crypt_to_an_lv_and_stops_there(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    dm = world.dm
    dm.create("vg-home", uuid="LVM-abc")
    dm.load("vg-home", Table.single(SIZE, Linear(DevNum(7, 0), 0)))
    dm.resume("vg-home")
    lv = dm.info("vg-home")
    assert lv is not None
    dm.create("crypthome", uuid="CRYPT-PLAIN-crypthome")
    dm.load("crypthome", Table.single(SIZE, Crypt(CIPHER, Secret(KEY), 0, lv.dev, 0)))
    dm.resume("crypthome")
    top = dm.info("crypthome")
    assert top is not None
    _sysfs(tmp_path, lv.dev, "dm-1", ("vg-home", "LVM-abc"))
    _sysfs(tmp_path, top.dev, "dm-2", ("crypthome", "CRYPT-PLAIN-crypthome"))
    target = Target(Path("/dev/mapper/crypthome"), Path("/mnt/h"), "ext4", (253, top.dev.minor))
    stack = resolve_stack(target, dm, sys_block=tmp_path / "dev")
    assert [layer.kind for layer in stack.layers] == [Kind.CRYPT, Kind.LV]
    assert stack.base.path == Path("/dev/mapper/vg-home") and stack.stacked
    assert "dm-crypt" in stack.describe() and "LVM logical volume" in stack.describe()
    base = stack.base_target(target)
    assert base.mountpoint is None and base.fstype == "ext4" and base.devnum == (253, lv.dev.minor)
    assert KEY not in stack.describe() and KEY not in repr(stack)


@pytest.mark.parametrize(
    ("kname", "dm", "table", "words"),
    [
        ("md0", None, None, "md RAID"),
        ("vda", None, None, "a plain disk"),
        ("dm-3", ("mpatha", "mpath-3600"), None, "multipath"),
        ("dm-4", ("pool", "x"), Table.single(SIZE, Thin(DevNum(253, 9), 1)), "thin table"),
    ],
)
def test_a_layer_no_method_can_take_stops_the_walk_with_its_name(
    kname: str, dm: tuple[str, str] | None, table: Table | None, words: str
) -> None:
    info = _info(DevNum(9, 0), kname, *(dm or (None, None)))
    layer = classify(info, table)
    assert layer.kind is Kind.STOP and words in layer.describe()
    crypt = Layer(Kind.CRYPT, _info(DevNum(253, 1), "dm-1", "c", "CRYPT-x"), None)
    with pytest.raises(RefusedError, match="stops the walk") as refused:
        L.refuse_keyring(Stack((crypt, layer)))  # nothing to refuse there
        from snapkit.host.stack import refuse_unsnapshottable

        refuse_unsnapshottable(Stack((crypt, layer)))
    assert refused.value.hint


def test_a_luks2_keyring_key_is_refused_with_the_way_out() -> None:
    table = Table.single(SIZE, Crypt(CIPHER, Secret(":64:logon:cryptsetup:x-d0"), 0, "/dev/x", 0))
    crypt = Layer(Kind.CRYPT, _info(DevNum(253, 1), "dm-1", "c", "CRYPT-LUKS2-x"), table)
    lv = Layer(Kind.LV, _info(DevNum(253, 0), "dm-0", "vg-home", "LVM-x"), None)
    with pytest.raises(RefusedError, match="kernel keyring") as refused:
        L.refuse_keyring(Stack((crypt, lv)))
    assert "--key-file" in (refused.value.hint or "")


# -- the dm method, wrapped ---------------------------------------------------------------------


def _stacked_world(tmp_path: Path) -> tuple[World, StackedMethod, CreateRequest]:
    """The fake world's prepared device ``data`` with ``crypthome`` over it."""
    world = make_world(tmp_path)
    dm = world.dm
    faults, dm.faults.fail_at = dm.faults.fail_at, None
    data = dm.info("data")
    assert data is not None
    dm.create("crypthome", uuid="CRYPT-PLAIN-crypthome")
    dm.load("crypthome", Table.single(SIZE, Crypt(CIPHER, Secret(KEY), 0, data.dev, 0)))
    dm.resume("crypthome")
    dm.faults.fail_at = faults
    top = dm.info("crypthome")
    assert top is not None
    crypt_table = dm.table("crypthome")
    stack = Stack(
        (
            Layer(Kind.CRYPT, _info(top.dev, "dm-9", "crypthome", top.uuid), crypt_table),
            Layer(Kind.PREPARED, _info(data.dev, "dm-0", "data", data.uuid), dm.table("data")),
        )
    )
    target = Target(Path("/dev/mapper/crypthome"), None, "ext4", (top.dev.major, top.dev.minor))
    method = wrap(DmMethod(world.host), world.host, target, stack)
    assert isinstance(method, StackedMethod)
    return world, method, CreateRequest(target, "s1", cow_dir=world.cow_dir)


def test_a_stacked_create_rebuilds_the_crypt_layer_with_the_same_key(tmp_path: Path) -> None:
    world, method, request = _stacked_world(tmp_path)
    assert method.unsuitable(request.target) is None
    plan, record = method.plan_create(request)
    apply(plan)
    state = world.dm.state()
    upper = state["s1-crypt"]
    assert upper.uuid == "SNAPKIT-s1-crypt-upper" and upper.active is not None
    target = upper.active.lines[0].target
    assert isinstance(target, Crypt) and target.key.reveal() == KEY
    assert str(target.device) == "/dev/mapper/s1" and target.cipher == CIPHER
    assert state["data"].active is not None
    assert state["data"].active.lines[0].target.type_name == "snapshot-origin"
    view = shown(record)
    assert view.device == "/dev/mapper/s1-crypt" and view.origin == "/dev/mapper/crypthome"
    assert record.device == "/dev/mapper/s1"  # saved as the dm method's own record
    layers = info_of(record).layers()
    assert [x["kind"] for x in layers] == ["snapshot", "crypt"]
    assert layers[1]["table"] == f"0 {SIZE} crypt {CIPHER} <key of crypthome> 0 /dev/mapper/s1 0"
    for text in (json.dumps(dict(record.details)), plan.render(), repr(record), repr(plan)):
        assert KEY not in text
    assert method.status(record).record.device == "/dev/mapper/s1-crypt"


def test_a_stacked_create_suspends_the_base_without_lockfs(tmp_path: Path) -> None:
    _world, method, request = _stacked_world(tmp_path)
    plan, _ = method.plan_create(request)
    assert "dmsetup suspend --nolockfs data" in plan.render()


def test_every_failure_of_a_stacked_create_changes_nothing(tmp_path: Path) -> None:
    probe, method, request = _stacked_world(tmp_path)
    calls = len(probe.faults.calls)
    apply(method.plan_create(request)[0])
    total = len(probe.faults.calls) - calls
    assert total > 5
    for n in range(total):
        world, method, request = _stacked_world(tmp_path)
        before = world.state()
        world.faults.fail_at = len(world.faults.calls) + n
        with pytest.raises(PlanError):
            apply(method.plan_create(request)[0])
        assert world.state() == before, f"failure at side effect {n} left a change"


def test_merge_parks_the_origin_layer_and_moves_it_back(tmp_path: Path) -> None:
    world, method, request = _stacked_world(tmp_path)
    plan, record = method.plan_create(request)
    apply(plan)
    from snapkit.methods.base import KernelMerge
    from snapkit.model import Pending

    assert isinstance(method, KernelMerge)  # dm: the flow starts, waits, finishes
    marked = method.mark_pending(record, Pending.MERGE)
    assert marked.details[STACK_KEY] == record.details[STACK_KEY]  # the mark keeps the stack
    merge = method.plan_merge(record)
    text = merge.render()
    assert "over /dev/mapper/s1-park" in text and "dmsetup remove s1-crypt" in text
    apply(merge)
    state = world.dm.state()
    assert "s1-crypt" not in state and "s1-park" not in state
    back = state["crypthome"]
    assert back.uuid == "CRYPT-PLAIN-crypthome" and back.active is not None
    target = back.active.lines[0].target
    assert isinstance(target, Crypt) and target.key.reveal() == KEY
    assert str(target.device) == "/dev/mapper/data"
    assert state["data"].active is not None
    assert state["data"].active.lines[0].target.type_name == "snapshot-merge"


def test_merge_and_discard_refuse_while_a_layer_is_open(tmp_path: Path) -> None:
    world, method, request = _stacked_world(tmp_path)
    plan, record = method.plan_create(request)
    apply(plan)
    world.dm.open("crypthome")
    with pytest.raises(RefusedError, match="must be unmounted to merge"):
        method.plan_merge(record)
    world.dm.close("crypthome")
    world.dm.open("s1-crypt")
    for verb in (method.plan_merge, method.plan_discard):
        with pytest.raises(RefusedError, match="s1-crypt is in use"):
            verb(record)


def test_every_failure_of_a_stacked_discard_changes_nothing(tmp_path: Path) -> None:
    def made() -> tuple[World, StackedMethod, object]:
        world, method, request = _stacked_world(tmp_path)
        plan, record = method.plan_create(request)
        apply(plan)
        return world, method, record

    probe, method, record = made()
    calls = len(probe.faults.calls)
    apply(method.plan_discard(record))  # type: ignore[arg-type]
    assert "s1-crypt" not in probe.dm.state()
    total = len(probe.faults.calls) - calls
    for n in range(total):
        world, method, record = made()
        before = world.state()
        world.faults.fail_at = len(world.faults.calls) + n
        with pytest.raises(PlanError):
            apply(method.plan_discard(record))  # type: ignore[arg-type]
        assert world.state() == before, f"failure at side effect {n} left a change"


def test_the_stack_detail_is_what_marks_a_record(tmp_path: Path) -> None:
    _world, method, request = _stacked_world(tmp_path)
    _plan, record = method.plan_create(request)
    assert STACK_KEY in record.details
    assert json.loads(record.details[STACK_KEY])["park"] == "s1-park"


def test_auto_on_a_stack_takes_the_method_of_the_base_and_says_why(tmp_path: Path) -> None:
    from snapkit.methods.auto import AutoMethod

    world, stacked, request = _stacked_world(tmp_path)
    assert stacked.stack is not None
    chosen = wrap(AutoMethod(world.host), world.host, request.target, stacked.stack)
    assert isinstance(chosen, StackedMethod) and chosen.name == "dm"
    plan, _ = chosen.plan_create(request)
    assert "[auto: dm, because /dev/mapper/data under it is a dm linear device" in plan.title
    assert "/dev/mapper/crypthome (dm-crypt) on /dev/mapper/data" in plan.title


def test_auto_on_crypt_over_a_plain_partition_names_the_layer_that_stops(tmp_path: Path) -> None:
    from snapkit.methods.auto import AutoMethod

    world, stacked, request = _stacked_world(tmp_path)
    assert stacked.stack is not None
    part = BlockInfo(DevNum(8, 2), "sda2", SIZE, 2048, None, None, (), False)
    stack = Stack((stacked.stack.layers[0], classify(part, None)))
    with pytest.raises(RefusedError, match="sda2 stops the walk") as refused:
        wrap(AutoMethod(world.host), world.host, request.target, stack)
    assert "snapkit device prepare" in (refused.value.hint or "")
    # with a command, auto falls back to freezing the top filesystem around it
    fallback = wrap(AutoMethod(world.host), world.host, request.target, stack, command=True)
    assert fallback.name == "auto"


def test_key_file_mode_unlocks_the_copy_with_cryptsetup_and_never_copies_a_key(
    tmp_path: Path,
) -> None:
    """--key-file: the snapshot's LUKS header is opened by cryptsetup with the file's path;
    a merge closes and reopens the origin's mapping (a keyring key cannot be parked)."""
    world, stacked, request = _stacked_world(tmp_path)
    assert stacked.stack is not None
    key_file = tmp_path / "k"
    key_file.write_text("passphrase")
    method = wrap(
        DmMethod(world.host), world.host, request.target, stacked.stack, key_file=str(key_file)
    )
    assert isinstance(method, StackedMethod) and method.unsuitable(request.target) is None
    plan, record = method.plan_create(request)
    text = plan.render()
    assert f"cryptsetup open --key-file {key_file} /dev/mapper/s1 s1-crypt" in text
    assert "dmsetup load s1-crypt" not in text and "passphrase" not in text
    assert info_of(record).key_file == str(key_file)
    merge_text = _merge_text(world, record)
    assert "cryptsetup close crypthome" in merge_text and "s1-park" not in merge_text
    assert f"cryptsetup open --key-file {key_file} /dev/mapper/data crypthome" in merge_text


def _merge_text(world: World, record: object) -> str:
    from snapkit.methods.stack.method import for_record

    assert not isinstance(record, str)
    method = for_record(DmMethod(world.host), world.host, record)  # type: ignore[arg-type]
    return method.plan_merge(record).render()  # type: ignore[arg-type]


def test_key_file_needs_a_readable_file_and_one_crypt_layer(tmp_path: Path) -> None:
    world, stacked, request = _stacked_world(tmp_path)
    assert stacked.stack is not None
    method = wrap(DmMethod(world.host), world.host, request.target, stacked.stack, key_file="/nope")
    assert "/nope is not a readable file" in (method.unsuitable(request.target) or "")


def test_recover_rebuilds_the_layer_of_a_record_an_earlier_family_settled(tmp_path: Path) -> None:
    """Found by the stacked power cuts: lvm's recovery settled a create cut short (clearing
    its mark and saving the record) after StackRecovery had planned with the marked record,
    which then skipped the rebuild. The step reads the record again when it runs."""
    from snapkit.methods.base import Context
    from snapkit.methods.stack.recover import StackRecovery
    from snapkit.model import Pending
    from snapkit.settings import Settings
    from snapkit.state import StateData, StateFile

    world, method, request = _stacked_world(tmp_path)
    plan, record = method.plan_create(request)
    apply(plan)
    world.dm.remove("s1-crypt")  # as after a reboot: the layer is gone, the base is back
    settings = Settings.under(tmp_path / "state")
    state = StateFile(settings.state_dir)
    marked = StateData().with_snapshot(record.marked(Pending.CREATE))
    recovery = StackRecovery(Context(world.host, settings))
    steps, done = recovery.plan_recover(marked)  # planned while the mark is there
    state.save(StateData().with_snapshot(record))  # then an earlier family settles it
    apply(steps)
    assert "s1-crypt" in world.dm.state(), done.actions
    assert any("rebuilt /dev/mapper/s1-crypt" in a for a in done.actions)
    state.save(StateData())  # and a record an earlier family dropped is left alone
    world.dm.remove("s1-crypt")
    steps, done = recovery.plan_recover(marked)
    apply(steps)
    assert "s1-crypt" not in world.dm.state() and not done.actions


def test_a_plain_linear_device_a_method_takes_is_not_walked_through(tmp_path: Path) -> None:
    """Found by make test-slow (tests/vm/test_io_errors.py): ext4 on a dm linear device made
    by hand over another linear device. dm snapshots such a device itself, as before stacks
    were walked; only a layer no method takes is passed through."""
    from snapkit.methods.auto import AutoMethod

    world = make_world(tmp_path)
    data = world.dm.info("data")
    assert data is not None
    top = Layer(Kind.LINEAR, _info(data.dev, "dm-0", "data", ""), world.dm.table("data"))
    below = Layer(Kind.STOP, _info(DevNum(7, 0), "loop0"), None, "a plain disk")
    stack = Stack((top, below))
    target = Target(Path("/dev/mapper/data"), None, "ext4", (data.dev.major, data.dev.minor))
    for inner in (DmMethod(world.host), AutoMethod(world.host)):
        assert wrap(inner, world.host, target, stack) is inner


def test_a_cow_dir_on_the_top_filesystem_is_refused_before_anything(tmp_path: Path) -> None:
    """The method below sees only the unmounted base, so the stack checks --cow-dir against
    the filesystem at the top (host/cowdir.py, the check every COW method shares)."""
    from dataclasses import replace as with_

    from snapkit.errors import ValidationError

    world, method, request = _stacked_world(tmp_path)
    top = with_(request.target, mountpoint=tmp_path)
    before = world.state()
    with pytest.raises(ValidationError, match="on the filesystem being snapshotted"):
        method.plan_create(with_(request, target=top, cow_dir=tmp_path / "cow"))
    assert world.state() == before
