"""Every registered export format through the shipped conformance suite (`search.exports.testing`)."""

from __future__ import annotations

import pytest

from search.exports import FORMATS
from search.exports.testing import FormatSuite


class TestEveryRegisteredFormat(FormatSuite):
    @pytest.fixture(params=FORMATS)
    def fmt(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)
