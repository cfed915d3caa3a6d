"""Processes this run starts, and how they end.

Each one runs in its own session (a terminal Ctrl-C reaches only this script, which then stops
them in order) and is stopped by PID, its descendants (nginx workers) by PID too. Reading what
they cost is procfs.py's job, not this module's."""

import os
import signal
import subprocess
from pathlib import Path

from .common import RunError, log

_children = []


def _proc_starttime(pid):
    """Field 22 of /proc/PID/stat: with the PID, it names one process (PIDs get reused)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()[19]


def children_of(pid):
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                kids += [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def process_tree(pid):
    """PID and all its descendants (nginx master + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children_of(p)
    return out


class Child:
    """A long-running helper process (balancer, backend, holder, strace) that this script owns."""

    def __init__(self, name, argv, log_path, stdin=subprocess.DEVNULL, stdout=None):
        self.name = name
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout or self._log, stderr=self._log, start_new_session=True
        )
        self.pid = self.popen.pid
        _children.append(self)

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, lines=25):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace=3.0):
        if self in _children:
            _children.remove(self)
        tree = [(p, _proc_starttime(p)) for p in process_tree(self.pid)] if self.alive() else []
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        # Descendants normally leave with their parent; any that did not are killed by PID,
        # after checking the PID still names the same process.
        for pid, start in tree[1:]:
            if start is not None and _proc_starttime(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream:
                stream.close()
        self._log.close()


def stop_all():
    for child in reversed(list(_children)):
        try:
            child.stop(grace=2.0)
        except Exception as e:  # cleanup goes on whatever one child does
            log(f"could not stop {child.name} (pid {child.pid}): {e}")


def run_cmd(argv, timeout, **kw):
    """subprocess.run with a timeout; a hung tool becomes a RunError, not a hung benchmark."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise RunError(f"{argv[0]} timed out after {timeout}s: {' '.join(map(str, argv))}")
