"""`lab down` after a crash: the supervisor killed outright, its node and server processes
orphaned; down still leaves no namespace, mount or process of the lab behind."""
import os
import signal
import time

from lab import control, net, paths


def lab_processes():
    """PIDs of processes in a lab namespace, plus the recorded ones still alive."""
    st = control.load_state()
    recorded = [r["pid"] for r in st.get("children", {}).values() if control.same_process(r)]
    return sorted(set(control._netns_pids()) | set(recorded))  # pylint: disable=protected-access


def test_down_after_the_supervisor_was_killed():
    control.down()
    state = control.up(containers=1)
    sup = state["supervisor"]["pid"]
    assert lab_processes(), "a running lab has processes"
    os.kill(sup, signal.SIGKILL)  # no orderly stop: nodes and repo server are orphaned
    deadline = time.monotonic() + 10
    while control.alive(sup) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not control.alive(sup)
    assert net.ours() and control._lab_mounts()  # pylint: disable=protected-access
    control.down()
    assert net.ours() == []
    assert control._lab_mounts() == []  # pylint: disable=protected-access
    assert not paths.STATE_FILE.exists()
    with open("/proc/mounts", encoding="utf-8") as fh:
        assert str(paths.HOME) not in fh.read()
    for rec in state.get("children", {}).values():
        assert not control.same_process(rec)
