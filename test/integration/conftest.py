"""The lab tier: one lab per session, brought up first and torn down at the end whatever
happened."""
import pytest

from lab import control
from labtest import Lab


@pytest.fixture(scope="session")
def lab():
    control.down()  # whatever an earlier run left behind
    try:
        state = control.up(containers=3)
        yield Lab(state)
    finally:
        control.down()
