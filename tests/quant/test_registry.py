from __future__ import annotations

import pytest

from quant.errors import UnknownNameError
from quant.registry import Registry


class Base:
    name = ""


def test_registry_rejects_unknown_names_and_arguments_with_the_valid_lists() -> None:
    reg: Registry[Base] = Registry("widget", "quant")

    @reg.register("plain")
    class Plain(Base):
        def __init__(self, size: int = 1) -> None:
            self.size = size

    assert Plain.name == "plain" and reg.names() == ["plain"] and reg.params("plain") == ["size"]
    assert "plain" in reg and "fancy" not in reg
    made = reg.create("plain", size=3)
    assert isinstance(made, Plain) and made.size == 3
    with pytest.raises(UnknownNameError, match="unknown widget 'fancy'; valid widgets: plain"):
        reg.create("fancy")
    with pytest.raises(UnknownNameError, match="widget 'plain' has no option 'colour'; valid options: size"):
        reg.create("plain", colour="red")


def test_functions_register_under_several_names_and_reserved_options_are_not_offered() -> None:
    reg: Registry[str] = Registry("format", "quant")

    @reg.register("a")
    @reg.register("b")
    def write(subject: str, layers: list[str] | None = None, group: int = 0) -> str:
        return subject

    assert reg.names() == ["a", "b"] and reg.lookup("a") is write and not hasattr(write, "name")
    assert reg.params("a", skip=1) == ["layers", "group"]
    reg.check("a", ["group"], skip=1, reserved=["layers"])
    with pytest.raises(UnknownNameError, match="format 'a' has no option 'layers'; valid options: group$"):
        reg.check("a", ["layers"], skip=1, reserved=["layers"])


def test_positional_arguments_are_not_options_and_kwargs_accepts_any() -> None:
    reg: Registry[object] = Registry("thing", "quant")
    reg.add("path", lambda path, steps=1: (path, steps))
    reg.add("open", lambda **kw: kw)
    assert reg.create("path", "/x", steps=2) == ("/x", 2)
    assert reg.params("open") is None and reg.create("open", anything=1) == {"anything": 1}
    with pytest.raises(UnknownNameError, match="valid options: steps"):
        reg.create("path", "/x", path="/y")
