"""Helpers shared by the benchmark scripts (stdlib only).

Everything here measures processes we started ourselves, inside network
namespaces we created ourselves; nothing touches other hosts.
"""

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    """Progress goes to stderr so stdout carries only the result table."""
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- namespaces

class Netns:
    """A network namespace with nothing but loopback, deleted on close()."""

    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.alive = True
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)

    def cmd(self, argv):
        """argv prefixed so that it runs inside the namespace.  `ip netns
        exec` execs the command, so the pid we get is the node's own pid."""
        return ["ip", "netns", "exec", self.name] + list(argv)

    def lo_counters(self):
        """Loopback statistics as seen inside the namespace (ip netns exec
        remounts /sys for the namespace, so this is its own lo)."""
        names = ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"]
        paths = ["/sys/class/net/lo/statistics/" + n for n in names]
        out = subprocess.run(self.cmd(["cat"] + paths), check=True,
                             capture_output=True, text=True, timeout=10).stdout
        return dict(zip(names, (int(x) for x in out.split())))

    def pids(self):
        r = subprocess.run(["ip", "netns", "pids", self.name],
                           capture_output=True, text=True, timeout=10)
        return [int(x) for x in r.stdout.split()]

    def close(self):
        if not self.alive:
            return
        # Only processes we spawned can live in a namespace we just created.
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        self.alive = False


# ------------------------------------------------------------ process stats

def cpu_seconds(pid):
    """utime+stime of one process (all its threads), in seconds; None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    # The command name may contain spaces: fields start after the last ')'.
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_total(pids):
    return sum(c for c in (cpu_seconds(p) for p in pids) if c is not None)


def smaps_rollup(pid):
    """Pss, Pss_Anon, Private_Clean+Private_Dirty (USS) and Rss, in KiB."""
    out = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return None
    return {
        "pss": out.get("Pss", 0),
        "pss_anon": out.get("Pss_Anon", 0),
        "uss": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0),
        "rss": out.get("Rss", 0),
    }


def udp_port_bound(pid, port):
    """True once `pid`'s namespace has a UDP socket on `port` (any address)."""
    want = ":%04X" % port
    for name in ("udp", "udp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, name)) as f:
                next(f)
                for line in f:
                    if line.split()[1].endswith(want):
                        return True
        except OSError:
            pass
    return False


def kill_all(procs, sig=signal.SIGKILL):
    for p in procs:
        if p is not None and p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for p in procs:
        if p is None:
            continue
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


# ------------------------------------------------------------------ admin

def admin(path, obj, timeout=10.0):
    """One request on a p2psipd admin socket; returns the decoded reply or
    {"ok": False, "error": ...} on any transport failure."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall((json.dumps(obj) + "\n").encode())
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        line = buf.split(b"\n", 1)[0]
        if not line:
            return {"ok": False, "error": "empty reply"}
        return json.loads(line)
    except (OSError, ValueError) as e:
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    finally:
        s.close()


# ------------------------------------------------------------- statistics

def percentile(values, p):
    """Nearest-rank percentile; None for an empty list."""
    if not values:
        return None
    v = sorted(values)
    k = max(1, -(-len(v) * p // 100))  # ceil(len*p/100), at least 1
    return v[int(k) - 1]


def median(values):
    if not values:
        return None
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def mean(values):
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------- machine

def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "model": model,
        "kernel": platform.release(),
        "mem_gib": round(mem_kb / 1048576, 1),
    }


def fmt(v, digits=3):
    """Format a number for a table cell; None prints as n/a."""
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return "%.0f" % v
    s = ("%%.%dg" % digits) % v
    if "e" in s:  # tiny values: fixed point reads better in a table
        s = "%.6f" % v
    return s
