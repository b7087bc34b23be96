"""StopSignals: a stop signal that lands while another is being handled must not deadlock the process
(the DICOM listener hung on stop this way: SIGTERM from its supervisor and from PR_SET_PDEATHSIG at once)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# The second SIGTERM is delivered while the main thread holds the event's lock, exactly where a handler
# that calls Event.set() itself blocks forever (the lock is not reentrant).
_NESTED = textwrap.dedent(
    """
    import os, signal, threading, time
    from dicomd.stop_signals import StopSignals

    stop = threading.Event()
    seen = []
    signals = StopSignals(stop, on_signal=seen.append)
    with stop._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            time.sleep(0.001)  # the handler runs here, inside the lock
    assert stop.wait(5), "stop was not set"
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [signal.SIGTERM, signal.SIGINT], seen
    signals.restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    print("ok")
    """
)

_SECOND_INTERRUPTS = textwrap.dedent(
    """
    import os, signal, threading
    from dicomd.stop_signals import StopSignals

    stop = threading.Event()
    StopSignals(stop, (signal.SIGINT,), second_interrupts=True)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.wait(5)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        threading.Event().wait(5)
    except KeyboardInterrupt:
        print("ok")
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)


def test_a_signal_inside_the_events_lock_does_not_deadlock() -> None:
    done = _run(_NESTED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_second_interrupt_raises_keyboard_interrupt_when_asked() -> None:
    done = _run(_SECOND_INTERRUPTS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
