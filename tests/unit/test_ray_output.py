"""The terminal filter for Ray's native log lines: what is dropped, what passes, and the switches
that bring Ray's output back. Each case runs in a fresh interpreter, since it rewires fd 2."""

import os
import subprocess
import sys

NATIVE = ("[2026-12-01 21:11:47,216 E 3652 3652] core_worker.cc:2465: Actor with class name: "
          "'MapWorker(MapBatches(ProbeActivations))' has constructor arguments in the object store")
STREAMED = "(MapWorker(MapBatches(CaptionActor)) pid=4306) [2026-12-01 21:12:11,310 W 4306 4306] raylet_client.cc:99: x"

SCRIPT = f"""
import os, sys, warnings
from dnd.ray_output import NativeLogFilter
with NativeLogFilter():
    print("[dnd] step 1: 600 probe images used", file=sys.stderr, flush=True)
    os.write(2, {NATIVE!r}.encode() + b"\\n")          # as Ray's C++ core writes it, below Python
    os.write(2, b"half a line, then ")                 # a line split across two writes
    os.write(2, b"the rest\\n")
    os.write(2, {STREAMED!r}.encode() + b"\\n")
    os.write(2, b"\\rcaptioning  10%")                    # a progress bar redrawn in place
    os.write(2, b"\\rcaptioning 100%\\n")
    warnings.warn("a real warning")
    sys.stderr.flush()
print("after", file=sys.stderr)
"""


def run(env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("DND_RAY_LOGS", "RAY_BACKEND_LOG_LEVEL")}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, env=env, timeout=60)
    # Decoded by hand: text mode would turn the progress bar's carriage returns into newlines.
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def test_native_ray_lines_are_kept_off_the_terminal_and_everything_else_passes():
    done = run({})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "core_worker.cc" not in done.stderr and "raylet_client.cc" not in done.stderr
    assert lines[0] == "[dnd] step 1: 600 probe images used"
    assert "half a line, then the rest" in lines
    assert "\rcaptioning  10%\rcaptioning 100%" in done.stderr
    assert any("UserWarning: a real warning" in line for line in lines)
    assert lines[-1] == "after"  # the filter flushed and gave fd 2 back


def test_ray_logs_switch_and_rays_own_level_show_everything():
    for env in ({"DND_RAY_LOGS": "1"}, {"RAY_BACKEND_LOG_LEVEL": "debug"}):
        done = run(env)
        assert done.returncode == 0, done.stderr
        assert NATIVE in done.stderr and STREAMED in done.stderr, env
        assert "[dnd] step 1" in done.stderr


def test_ray_init_options_respect_rays_logger_level(monkeypatch):
    import logging

    from dnd.ray_output import ray_init_options

    monkeypatch.delenv("DND_RAY_LOGS", raising=False)
    monkeypatch.delenv("RAY_LOGGER_LEVEL", raising=False)
    assert ray_init_options() == {"logging_level": logging.WARNING}
    monkeypatch.setenv("RAY_LOGGER_LEVEL", "debug")
    assert ray_init_options() == {}
    monkeypatch.delenv("RAY_LOGGER_LEVEL")
    monkeypatch.setenv("DND_RAY_LOGS", "1")
    assert ray_init_options() == {}


def test_a_terminal_is_still_known_as_one_while_the_filter_holds_fd_2():
    # Progress bars are drawn only on a terminal; the filter's pipe must not hide that it is one.
    import pty

    script = ("import sys\n"
              "from dnd.ray_output import NativeLogFilter, stderr_is_terminal\n"
              "with NativeLogFilter():\n"
              "    inside = stderr_is_terminal()\n"
              "print(inside, stderr_is_terminal(), sys.stderr.isatty())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DND_RAY_LOGS", "RAY_BACKEND_LOG_LEVEL")}
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-c", script], stderr=terminal, stdout=subprocess.PIPE, text=True,
                              env=env, timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 0
    assert done.stdout.split() == ["True", "True", "True"]
    piped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert piped.stdout.split() == ["False", "False", "False"]
