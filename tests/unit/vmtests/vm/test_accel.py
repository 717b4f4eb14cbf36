"""Accelerator choice: KVM only when a real probe boot proves it, cached per host boot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from vmtests.vm import accel, execute
from vmtests.vm.errors import BootError, VmTimeout
from vmtests.vm.image import Image, cache_dir
from vmtests.vm.kernel.layer import Layer
from vmtests.vm.qemu import Accel


@pytest.fixture
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Image:
    monkeypatch.setenv("SNAPKIT_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VMTEST_ACCEL", raising=False)
    return Image(tmp_path / "cache" / "0123456789abcdef", Layer(tmp_path / "cache" / "kernel-fe"))


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count probe boots; the verdict is set per test through ``monkeypatch``."""
    calls: list[str] = []
    set_probe(monkeypatch, calls, False)
    return calls


def set_probe(monkeypatch: pytest.MonkeyPatch, calls: list[str], verdict: bool) -> None:
    def probe(image: Image) -> bool:
        calls.append("probe")
        return verdict

    monkeypatch.setattr(accel, "_kvm_usable_now", probe)


@pytest.mark.parametrize("verdict, expected", [(True, Accel.KVM), (False, Accel.TCG)])
def test_auto_follows_the_probe(
    image: Image, probes: list[str], monkeypatch: pytest.MonkeyPatch, verdict: bool, expected: Accel
) -> None:
    set_probe(monkeypatch, probes, verdict)
    assert accel.choose("auto", image) is expected
    assert probes == ["probe"]


def test_auto_verdict_is_cached_per_boot_id(
    image: Image, probes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_probe(monkeypatch, probes, True)
    assert accel.choose("auto", image) is Accel.KVM
    set_probe(monkeypatch, probes, False)  # would now say TCG, but the cache answers
    assert accel.choose("auto", image) is Accel.KVM
    assert probes == ["probe"]
    cached = json.loads((cache_dir() / "accel.json").read_text())
    assert list(cached.values()) == ["kvm"]

    # After a host reboot (a new boot id) the probe runs again.
    monkeypatch.setattr(accel, "_cache_key", lambda img: f"another-boot:{img.recipe_hash}")
    assert accel.choose("auto", image) is Accel.TCG
    assert probes == ["probe", "probe"]


def test_cache_key_is_this_boot_and_this_image(image: Image) -> None:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert accel._cache_key(image) == f"{boot_id}:0123456789abcdef+fe"  # userland + kernel


def test_a_corrupt_cache_is_ignored(
    image: Image, probes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = cache_dir() / "accel.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert accel.choose("auto", image) is Accel.TCG
    assert probes == ["probe"]


@pytest.mark.parametrize("requested", ["kvm", "tcg"])
def test_explicit_choice_is_honoured_without_a_probe(
    image: Image, probes: list[str], monkeypatch: pytest.MonkeyPatch, requested: str
) -> None:
    monkeypatch.setenv("VMTEST_ACCEL", "kvm" if requested == "tcg" else "tcg")  # ignored
    assert accel.choose(requested, image) is Accel(requested)
    assert probes == []


@pytest.mark.parametrize("env", ["kvm", "tcg"])
def test_env_overrides_auto(
    image: Image, probes: list[str], monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    monkeypatch.setenv("VMTEST_ACCEL", env)
    assert accel.choose("auto", image) is Accel(env)
    assert probes == []


def test_bad_choices_are_refused(image: Image, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="accelerator 'hvf'"):
        accel.choose("hvf", image)
    monkeypatch.setenv("VMTEST_ACCEL", "whpx")
    with pytest.raises(ValueError, match="accelerator 'whpx'"):
        accel.choose("auto", image)


# -- the probe itself: a real boot must succeed; /dev/kvm opening is not enough ---------------


@pytest.fixture
def kvm_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: path == "/dev/kvm")


def fake_boot(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def run(image: Image, argv: list[str], workdir: Path, **kw: Any) -> execute.ExecResult:
        seen.append({"argv": argv, **kw})
        if isinstance(outcome, BaseException):
            raise outcome
        return execute.ExecResult(outcome, 1.5)

    monkeypatch.setattr(execute, "run", run)
    return seen


def test_probe_accepts_kvm_when_the_guest_ran_a_command(
    image: Image, kvm_opens: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_boot(monkeypatch, 0)
    assert accel._kvm_usable_now(image) is True
    assert seen[0]["accel"] is Accel.KVM
    assert seen[0]["timeout"] == accel.PROBE_TIMEOUT_S


@pytest.mark.parametrize(
    "outcome", [VmTimeout("spun for 8 s"), BootError("KVM: entry failed"), 1], ids=str
)
def test_probe_rejects_kvm_that_does_not_boot(
    image: Image, kvm_opens: None, monkeypatch: pytest.MonkeyPatch, outcome: Any
) -> None:
    fake_boot(monkeypatch, outcome)
    assert accel._kvm_usable_now(image) is False


def test_probe_does_not_boot_without_dev_kvm(image: Image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    seen = fake_boot(monkeypatch, 0)
    assert accel._kvm_usable_now(image) is False
    assert seen == []
