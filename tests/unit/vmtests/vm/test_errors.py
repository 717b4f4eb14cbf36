"""One error tree for the VM layer, as drawn in vmtests/vm/errors.py's docstring."""

from __future__ import annotations

from vmtests.vm import errors


def test_every_error_is_a_vm_error_and_the_docstring_draws_each() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.VmError)
        assert f" {name} " in errors.__doc__ or name == "VmError"
    assert not hasattr(errors, "ImageMissing")  # nothing raised it


def test_errors_carry_their_data() -> None:
    assert errors.ImageError("no image", recipe="abc").recipe == "abc"
    lost = errors.LostVMError("lost", console_tail="oops", exit_code=-9)
    assert (lost.exit_code, lost.console_tail) == (-9, "oops")
    assert "--- console tail ---\noops" in str(lost)
    assert errors.VmTimeout("late", seconds=3.0).seconds == 3.0
