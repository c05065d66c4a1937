from __future__ import annotations

import pytest

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
    made = reg.create("plain", size=3)
    assert isinstance(made, Plain) and made.size == 3
    with pytest.raises(ValueError, match="unknown widget 'fancy'; valid widgets: plain"):
        reg.create("fancy")
    with pytest.raises(TypeError, match=r"widget 'plain' takes no argument\(s\) \['colour'\]; valid: size"):
        reg.create("plain", colour="red")
