"""The lab tier: one lab per session, brought up first and torn down at the end whatever
happened."""
import pytest

from lab import control
from labtest import BACKENDS, Lab


@pytest.fixture(scope="session")
def lab():
    control.down()  # whatever an earlier run left behind
    try:
        # One node per backend that runs on Debian: the takeover is tested on each.
        state = control.up(containers=3, backends=BACKENDS)
        yield Lab(state)
    finally:
        control.down()
