"""What a process costs and which sockets exist, read from /proc: CPU seconds, per-CPU and
whole-machine busy time (/proc/stat), voluntary context switches, RSS, open descriptors, the IPv4 TCP table.

Every reader tolerates a process that has just exited (it counts as nothing), because the
benchmark samples balancers that may die under load."""

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    data = Path(f"/proc/{pid}/stat").read_text()
    return data[data.rindex(")") + 2 :].split()


def cpu_seconds(pids):
    """utime + stime of each process (all its threads), summed."""
    total = 0
    for p in pids:
        try:
            f = _stat(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def cpu_ticks(cpus):
    """(total, idle + iowait) jiffies of the listed CPUs ("1" or "0,1"), from /proc/stat."""
    wanted = {f"cpu{c}" for c in cpus.split(",")}
    total = idle = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted:
                v = [int(x) for x in fields[1:]]
                total += sum(v)
                idle += v[3] + v[4]
    return total, idle


def machine_busy_seconds():
    """CPU seconds the whole machine spent busy (every CPU: user, system, irq, softirq, steal), from
    /proc/stat's aggregate line. Work the kernel does for a process in softirq or kworker context
    is charged to whoever happens to run, not to the process: only this sees all of it."""
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] == "cpu":
                # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
                v = [int(x) for x in fields[1:9]]
                return (sum(v) - v[3] - v[4]) / CLK_TCK
    return 0.0


def wakeups(pids):
    """Voluntary context switches (sleeps in epoll_wait, mostly) of every thread of these processes."""
    total = 0
    for p in pids:
        for status in Path(f"/proc/{p}/task").glob("*/status"):
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
            except OSError:
                continue
    return total


def busy_pct(before, after):
    total, idle = after[0] - before[0], after[1] - before[1]
    return None if total <= 0 else 100.0 * (total - idle) / total


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def fd_count(pids):
    total = 0
    for p in pids:
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def socket_count(pid):
    """How many of the process's descriptors are sockets (0 once it has exited)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    n = 0
    for fd in fds:
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def tcp_table():
    """(local port, remote port, state) of every IPv4 TCP socket; state 01 = ESTABLISHED, 0A = LISTEN."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            yield int(parts[1].split(":")[1], 16), int(parts[2].split(":")[1], 16), parts[3]


def is_listening(port):
    return any(lp == port and st == "0A" for lp, _, st in tcp_table())


def established_to(ports):
    """Established connections whose remote end is one of `ports`: a balancer's server sides."""
    ports = set(ports)
    return sum(1 for _, rp, st in tcp_table() if st == "01" and rp in ports)
