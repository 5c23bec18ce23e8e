"""Running commands for the lab: argv lists only, loud on failure."""
import subprocess
import sys


def run(argv, check=True, capture=False, env=None, timeout=None, input=None):
    """Run argv; raise with its output when it fails."""
    res = subprocess.run(
        [str(a) for a in argv],
        check=False,
        text=True,
        capture_output=capture,
        env=env,
        timeout=timeout,
        input=input,
    )
    if check and res.returncode != 0:
        detail = (res.stderr or "") + (res.stdout or "") if capture else ""
        raise RuntimeError(f"command failed ({res.returncode}): {' '.join(map(str, argv))}\n{detail}")
    return res


def out(argv, **kw):
    """Run argv and return its stdout."""
    return run(argv, capture=True, **kw).stdout


def say(msg):
    print(f"[lab] {msg}", file=sys.stderr, flush=True)
