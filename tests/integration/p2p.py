"""Shared helpers for the p2psipd integration tests and scripts/testbed.

Python 3 standard library only.  Everything that waits is bounded in time,
every admin call has a timeout, and status queries over many nodes run with
bounded parallelism and close each socket after one request, so that 500
nodes never mean 500 open sockets here.

The daemon's interface (options, admin JSON) is described in
docs/daemon-interface (the lead's notes) and summed up in README.md beside
this file.
"""

import concurrent.futures
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

RING = 1 << 160
SKIP = 77
OVERLAY = "overlay.test"
HOST = "127.0.0.1"
MAX_PATH = 32  # DHT_MAX_PATH in dht/dht.h: hops a lookup may take
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Identifiers ---------------------------------------------------------------

def key_id(name):
    """Key id of a resource name: SHA-1 of its UTF-8 bytes, 40 lowercase hex."""
    return hashlib.sha1(name.encode("utf-8")).hexdigest()


def addr_id(addr):
    """Default node id: SHA-1 of "IP:PORT"."""
    return key_id(addr)


def id_int(hexid):
    return int(hexid, 16)


def successor_of(kid, sorted_ids):
    """The first node id at or after kid on the ring (ids sorted as ints)."""
    k = id_int(kid)
    for i in sorted_ids:
        if id_int(i) >= k:
            return i
    return sorted_ids[0]


def sort_ids(ids):
    return sorted(set(ids), key=id_int)


def ring_distance(a, b):
    """Clockwise distance from id a to id b."""
    return (id_int(b) - id_int(a)) % RING


def even_ids(n, salt="p2psip test ring"):
    """n node ids spread evenly round the ring, in index order: node i at
    i/n of the way from an offset (SHA-1 of salt).  Each node owns exactly
    1/n of the key space, so a test that needs keys a given node owns, or
    neighbours at known distances, does not depend on the ports it got
    (default ids are SHA-1 of "IP:PORT": a node may own a sliver)."""
    off = id_int(key_id(salt))
    return ["%040x" % ((off + i * RING // n) % RING) for i in range(n)]


def responsible_nodes(kid, sorted_ids, replicas):
    """The owner of kid and its replicas-1 successors, in ring order."""
    owner = sorted_ids.index(successor_of(kid, sorted_ids))
    n = min(replicas, len(sorted_ids))
    return [sorted_ids[(owner + i) % len(sorted_ids)] for i in range(n)]


# Admin client ---------------------------------------------------------------

class AdminError(Exception):
    """No answer from an admin socket (connect failure, timeout, bad reply)."""


class AdminConn:
    """One connection to an admin socket: send lines, read reply lines."""

    def __init__(self, path, timeout=5.0):
        self.path = path
        self.timeout = timeout
        self.buf = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise AdminError("connect %s: %s" % (path, e)) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send_raw(self, data):
        """Send bytes; returns False if the daemon already closed on us."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False
        except socket.timeout:
            raise AdminError("send to %s timed out" % self.path) from None

    def recv_line(self, timeout=None, limit=32 << 20):
        """Next reply line (without the newline), or None at EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AdminError("no reply line from %s within %.1fs" % (self.path, timeout or self.timeout))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.buf:
                    raise AdminError("EOF inside a reply line from %s: %r" % (self.path, self.buf[:200]))
                return None
            self.buf += chunk
            if len(self.buf) > limit:
                raise AdminError("reply from %s over %d bytes" % (self.path, limit))
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def recv_json(self, timeout=None):
        line = self.recv_line(timeout)
        if line is None:
            raise AdminError("%s closed the connection without a reply" % self.path)
        try:
            obj = json.loads(line)
        except ValueError:
            raise AdminError("reply from %s is not JSON: %r" % (self.path, line[:200])) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
            raise AdminError("reply from %s has no boolean ok: %r" % (self.path, line[:200]))
        return obj

    def request(self, req, timeout=None):
        data = req if isinstance(req, bytes) else (json.dumps(req) + "\n").encode()
        if not self.send_raw(data):
            raise AdminError("%s closed the connection before the request was sent" % self.path)
        return self.recv_json(timeout)


def admin(path, req, timeout=5.0):
    """One request on a fresh connection; returns the reply object."""
    with AdminConn(path, timeout) as c:
        return c.request(req, timeout)


def admin_ok(path, req, timeout=5.0):
    """Like admin() but raises AdminError unless the reply says ok:true."""
    r = admin(path, req, timeout)
    if not r["ok"]:
        raise AdminError("%s on %s: %s" % (req.get("cmd"), path, r.get("error")))
    return r


def parallel_map(fn, items, workers=16):
    """fn over items with at most `workers` threads; results in item order.
    Exceptions are returned in place of results, never raised.  The pool is
    torn down before returning so that no thread outlives the call (the
    tests fork daemons with a parent-death signal, which is per thread)."""
    items = list(items)
    if not items:
        return []

    def wrap(x):
        try:
            return fn(x)
        except Exception as e:  # a failure of one node is data, not an abort
            return e
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as ex:
        return list(ex.map(wrap, items))


# Waiting ---------------------------------------------------------------------

class WaitTimeout(Exception):
    pass


def wait_until(pred, timeout, what, interval=0.25, describe=None):
    """Call pred() until it returns something truthy (returned) or timeout
    seconds pass: then raise WaitTimeout naming what, with describe(last)
    for the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = pred()
        except (AdminError, OSError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            detail = describe(last) if describe else repr(last)
            raise WaitTimeout("%s: not reached within %.0fs; last: %s" % (what, timeout, detail))
        time.sleep(interval)


def wait_value(fetch, pred, timeout, what, interval=0.05):
    """fetch() until pred(value) holds; returns that value (WaitTimeout
    naming what, with the last value, otherwise).  E.g. a counter that
    proves a packet was dropped: the proof of a negative, where a short
    silence would only be a guess on a loaded machine."""
    last = [None]

    def probe():
        last[0] = fetch()
        return last[0] if pred(last[0]) else None
    return wait_until(probe, timeout, what, interval, describe=lambda _: last[0])


# Ports and limits -------------------------------------------------------------

PORT_LO, PORT_HI = 20000, 32000
PORT_LOCK = os.path.join(tempfile.gettempdir(), "p2psip-ports.lock")
_port_lock = None   # fd of PORT_LOCK, open for the life of this process
_my_ports = []      # (base, n) blocks this process holds


def port_free(port, host=HOST, kinds=(socket.SOCK_STREAM, socket.SOCK_DGRAM)):
    """True if port binds on host for each kind (TCP and UDP by default)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for k in kinds:
        s = socket.socket(fam, k)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def _lock_ports(base, n, op):
    """Lock (or unlock) bytes base..base+n-1 of PORT_LOCK: one byte per port
    number.  POSIX record locks belong to this process and vanish when it
    dies, so a killed test never leaves ports reserved."""
    global _port_lock
    if _port_lock is None:
        try:
            _port_lock = os.open(PORT_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
            if os.fstat(_port_lock).st_uid == os.geteuid():
                os.fchmod(_port_lock, 0o666)  # other users' tests share it
        except OSError as e:
            info("no port lock file %s (%s): ports are only checked by binding" % (PORT_LOCK, e))
            _port_lock = -1
    if _port_lock < 0:
        return True
    try:
        fcntl.lockf(_port_lock, op, n, base, os.SEEK_SET)
        return True
    except OSError:
        return False


def reserve_ports(base, n, host=HOST):
    """Take ports base..base+n-1 for this process (TCP and UDP, on every
    address): True if no other test process holds any of them and each
    binds on host now.  Held until this process exits."""
    if any(b < base + n and base < b + m for b, m in _my_ports):
        return False
    if not _lock_ports(base, n, fcntl.LOCK_EX | fcntl.LOCK_NB):
        return False
    if all(port_free(base + i, host) for i in range(n)):
        _my_ports.append((base, n))
        return True
    _lock_ports(base, n, fcntl.LOCK_UN)
    return False


def pick_ports(n, host=HOST, lo=PORT_LO, hi=PORT_HI, tries=200):
    """A base port b such that b..b+n-1 are this test's, for TCP and UDP:
    reserved against every other process that uses this module (a lock
    file, so two tests never pick the same port even before either binds
    it) and free on host now (so a leftover or foreign process is avoided).
    The range sits below Linux's ephemeral ports (32768+) so outgoing
    connections and port-0 sockets never take them while a node is down."""
    rnd = random.SystemRandom()
    for _ in range(tries):
        base = rnd.randrange(lo, hi - n + 1)
        if reserve_ports(base, n, host):
            return base
    raise RuntimeError("no %d free consecutive ports in %d-%d on %s" % (n, lo, hi, host))


def raise_nofile(want):
    """Raise RLIMIT_NOFILE toward want (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# Processes -----------------------------------------------------------------------

_libc = None


def _pdeathsig():
    # Runs in the child between fork and exec: the daemon gets SIGKILL when
    # the test process dies, even by SIGKILL.  prctl is looked up before the
    # fork so that the child only makes the call.
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _load_libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.prctl  # resolve now, not in the child


def proc_state(pid):
    """Process state letter from /proc, or None if there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return st[st.rfind(")") + 2]


def proc_starttime(pid):
    """When pid started (clock ticks since boot), or None: with the pid it
    names one process for good, though pids are reused."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def proc_forked(pid, starttime):
    """True if the process a launcher forked as pid at starttime still runs
    (a zombie the launcher has not reaped yet does not)."""
    return proc_state(pid) not in (None, "Z", "X") and proc_starttime(pid) == starttime


class Launcher:
    """p2psipd --launcher: nodes forked from one process that initialised
    OpenSSL once, so that they share those pages (node/launch.c).  cmd:
    words before the binary (e.g. ip netns exec NS).  Its children outlive
    it: close() ends the launcher only."""

    def __init__(self, binary, cmd=(), new_session=False, die_with_parent=True):
        if die_with_parent:
            _load_libc()
        self.proc = subprocess.Popen(list(cmd) + [binary, "--launcher"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, close_fds=True, start_new_session=new_session,
                                     preexec_fn=_pdeathsig if die_with_parent else None)
        self.exits = {}  # pid -> exit code, or -signal, as reported by the launcher
        self.buf = b""

    def request(self, req, timeout=10.0):
        """One request line, one reply (a dict)."""
        if self.proc.poll() is not None:
            raise RuntimeError("launcher exited (code %s)" % self.proc.returncode)
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        return self.reply(timeout)

    def reply(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise WaitTimeout("launcher: no reply within %.0fs" % timeout)
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("launcher closed its stdout (exit %s)" % self.proc.poll())
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def spawn(self, argv, log=None, cwd=None):
        """Start a node with argv (without the binary); returns its pid."""
        req = {"argv": list(argv)}
        if log:
            req["log"] = log
        if cwd:
            req["cwd"] = cwd
        r = self.request(req)
        if "pid" not in r:
            raise RuntimeError("launcher: %s" % r.get("error", r))
        return r["pid"]

    def poll(self):
        """Collect the exits the launcher reaped since the last poll."""
        if self.proc.poll() is not None:
            return self.exits
        for e in self.request({"cmd": "wait"})["exited"]:
            self.exits[e["pid"]] = e["code"] if "code" in e else -e["signal"]
        return self.exits

    def exit_code(self, pid):
        """pid's exit code (negative: signal) once reaped, else None."""
        if pid not in self.exits and proc_state(pid) in (None, "Z", "X"):
            self.poll()
        return self.exits.get(pid)

    def close(self, timeout=5.0):
        """EOF on its stdin: the launcher exits, its nodes run on."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Forked:
    """A launcher's child with the parts of subprocess.Popen's interface
    the scripts use (pid, poll, wait, send_signal, kill, returncode)."""

    def __init__(self, launcher, pid):
        self.launcher, self.pid, self.returncode = launcher, pid, None

    def poll(self):
        if self.returncode is None:
            self.returncode = self.launcher.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("pid %d" % self.pid, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def proc_is(pid, binary, arg=None):
    """True if pid is a live (not zombie) process running binary, with arg
    among its arguments if given (so a reused pid is never taken for ours)."""
    st = proc_state(pid)
    if st is None or st in "ZX":
        return False
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == os.path.basename(binary) and (arg is None or arg in argv)


class Node:
    """One daemon: fixed index, port, admin socket and log in the run dir."""

    def __init__(self, index, port, rundir, host=HOST, node_id=None):
        self.index = index
        self.port = port
        self.host = host
        self.addr = "%s:%d" % (host, port)
        self.forced_id = node_id
        self.id = node_id or addr_id(self.addr)
        self.sock = os.path.join(rundir, "node%d.sock" % index)
        self.log = os.path.join(rundir, "node%d.log" % index)
        self.proc = None      # Popen when this process started it
        self.launcher = None  # the Launcher that forked it, when this process holds that
        self.starttime = None  # forked by a launcher: proc_starttime of its pid
        self.pid = None
        self.state = "new"    # new | alive | dead (killed) | left | stopped
        self.exit_code = None
        self.started_at = None

    def to_json(self):
        return {"index": self.index, "port": self.port, "addr": self.addr, "id": self.id,
                "forced_id": self.forced_id, "sock": self.sock, "log": self.log,
                "pid": self.pid, "state": self.state, "exit_code": self.exit_code,
                "starttime": self.starttime}

    @classmethod
    def from_json(cls, d, rundir):
        n = cls(d["index"], d["port"], rundir, d["addr"].rsplit(":", 1)[0], d.get("forced_id"))
        n.id, n.sock, n.log = d["id"], d["sock"], d["log"]
        n.pid, n.state, n.exit_code = d["pid"], d["state"], d.get("exit_code")
        n.starttime = d.get("starttime")
        return n

    def running(self, binary):
        if self.pid is None:
            return False
        if self.proc is not None:
            if self.proc.poll() is not None:
                self.exit_code = self.proc.returncode
                return False
            return True
        if self.starttime is not None:  # forked: its command line is the launcher's
            if self.launcher is not None and self.launcher.exit_code(self.pid) is not None:
                self.exit_code = self.launcher.exits[self.pid]
                return False
            return proc_forked(self.pid, self.starttime)
        return proc_is(self.pid, binary, self.sock)

    def admin(self, req, timeout=5.0):
        return admin(self.sock, req, timeout)

    def admin_ok(self, req, timeout=5.0):
        return admin_ok(self.sock, req, timeout)

    def status(self, timeout=5.0):
        return admin_ok(self.sock, {"cmd": "status"}, timeout)

    def log_tail(self, n=15):
        try:
            with open(self.log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 32768))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError as e:
            return ["(no log: %s)" % e]
        return lines[-n:]

    def __repr__(self):
        return "node%d(%s %s)" % (self.index, self.addr, self.id[:8])


class RingReport:
    """Result of one consistency check over the live nodes."""

    def __init__(self, nodes, statuses, succ_len=None):
        self.nodes = nodes
        self.statuses = statuses  # index -> status dict or exception
        self.ids = sort_ids(self.actual_id(n) for n in nodes)
        self.bad = []             # (node, reason)
        self.full_succ = 0        # nodes whose whole successor list is right
        pos = {i: k for k, i in enumerate(self.ids)}
        m = len(self.ids)
        for n in nodes:
            st = statuses.get(n.index)
            if not isinstance(st, dict):
                self.bad.append((n, "no status: %s" % st))
                continue
            if st.get("id") != n.id:
                self.bad.append((n, "id %s, expected %s" % (st.get("id"), n.id)))
                continue
            k = pos[n.id]
            want_succ, want_pred = self.ids[(k + 1) % m], self.ids[(k - 1) % m]
            succ = st.get("successors") or []
            pred = st.get("predecessor")
            got_succ = succ[0].get("id") if succ and isinstance(succ[0], dict) else None
            got_pred = pred.get("id") if isinstance(pred, dict) else None
            if m == 1:
                ok = got_succ in (None, n.id) and got_pred in (None, n.id)
                if not ok:
                    self.bad.append((n, "alone but succ %s pred %s" % (got_succ, got_pred)))
                continue
            why = []
            if got_succ != want_succ:
                why.append("succ %s want %s" % (_short(got_succ), _short(want_succ)))
            if got_pred != want_pred:
                why.append("pred %s want %s" % (_short(got_pred), _short(want_pred)))
            if why:
                self.bad.append((n, ", ".join(why)))
            if succ_len:
                want = [self.ids[(k + i) % m] for i in range(1, min(succ_len, m - 1) + 1)]
                if [s.get("id") for s in succ if isinstance(s, dict)] == want:
                    self.full_succ += 1

    @staticmethod
    def actual_id(n):
        return n.id

    @property
    def consistent(self):
        return not self.bad and len(self.nodes) > 0

    def summary(self, limit=10):
        lines = ["%d live nodes: %d consistent, %d wrong" %
                 (len(self.nodes), len(self.nodes) - len(self.bad), len(self.bad))]
        for n, why in self.bad[:limit]:
            lines.append("  %r: %s" % (n, why))
        if len(self.bad) > limit:
            lines.append("  ... and %d more" % (len(self.bad) - limit))
        return "\n".join(lines)

    def __bool__(self):
        return self.consistent


def _short(h):
    return h[:8] if isinstance(h, str) else str(h)


class Cluster:
    """A set of p2psipd nodes in one run directory.

    die_with_parent: the daemons get SIGKILL if this Python process dies
    (tests); False lets them outlive it (scripts/testbed)."""

    def __init__(self, rundir, binary, overlay=OVERLAY, host=HOST, base_port=None,
                 replicas=3, successors=None, refresh=None, log_level=os.environ.get("P2PSIP_LOG_LEVEL", "info"),
                 extra_args=(), workers=16, die_with_parent=True, new_session=None, secure=None,
                 port_count=None, launcher=None):
        self.rundir = os.path.abspath(rundir)
        self.binary = os.path.abspath(binary)
        self.overlay = overlay
        self.host = host
        self.base_port = base_port
        # Ports base_port.. reserved for this cluster (None: no limit known);
        # nodes beyond them get a port picked on their own.
        self.port_count = port_count
        self.replicas = replicas
        self.successors = successors
        self.refresh = refresh
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.workers = workers
        self.die_with_parent = die_with_parent
        self.new_session = (not die_with_parent) if new_session is None else new_session
        self.nodes = []
        # Start nodes through p2psipd --launcher (by default when
        # P2PSIP_LAUNCHER=1): forks that share OpenSSL's pages.
        self.use_launcher = os.environ.get("P2PSIP_LAUNCHER") == "1" if launcher is None else launcher
        self.launcher = None
        # The secured mode (TLS peer links, certificates from an overlay CA
        # made here) by default when P2PSIP_SECURE=1: the ring tests run in
        # both modes.
        self.secure = os.environ.get("P2PSIP_SECURE") == "1" if secure is None else secure
        self.cadir = os.path.join(self.rundir, "ca")
        os.makedirs(self.rundir, exist_ok=True)
        if self.secure and not os.path.exists(os.path.join(self.cadir, "ca.crt")):
            ca_tool("init", self.cadir, "--overlay", overlay)
        # sockaddr_un.sun_path holds 107 bytes and a NUL.
        if len(os.path.join(self.rundir, "node99999.sock")) > 107:
            raise ValueError("run dir path too long for unix sockets: %s" % self.rundir)
        if die_with_parent:
            _load_libc()

    # Bookkeeping ---------------------------------------------------------

    def add_node(self, port=None, node_id=None):
        idx = len(self.nodes)
        if port is None:
            if self.base_port is None:
                raise ValueError("no base port and no port given")
            if self.port_count is not None and idx >= self.port_count:
                port = pick_ports(1, self.host)
            else:
                port = self.base_port + idx
        n = Node(idx, port, self.rundir, self.host, node_id)
        if self.secure:
            n.id = self.enrol(n)
        self.nodes.append(n)
        return n

    def enrol(self, n):
        """A certificate for node n from the cluster's CA; returns its node
        id (n's forced id, placed by the CA, or one the CA drew)."""
        base = os.path.join(self.rundir, "node%d" % n.index)
        for ext in (".crt", ".key"):
            if os.path.exists(base + ext):
                os.unlink(base + ext)
        extra = ["--node-id", n.forced_id] if n.forced_id else []
        return ca_tool("node", self.cadir, base, *extra).strip()

    def alive(self):
        """Nodes believed alive whose process is still running."""
        return [n for n in self.nodes if n.state == "alive" and n.running(self.binary)]

    def crashed(self):
        """Nodes believed alive whose process has gone: a daemon bug."""
        return [n for n in self.nodes if n.state == "alive" and not n.running(self.binary)]

    def save(self, path=None):
        path = path or os.path.join(self.rundir, "nodes.json")
        d = {"binary": self.binary, "overlay": self.overlay, "host": self.host,
             "base_port": self.base_port, "replicas": self.replicas,
             "successors": self.successors, "refresh": self.refresh,
             "log_level": self.log_level, "extra_args": self.extra_args, "secure": self.secure,
             "launcher": self.use_launcher,
             "nodes": [n.to_json() for n in self.nodes]}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(d, f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, rundir, **kw):
        with open(os.path.join(rundir, "nodes.json")) as f:
            d = json.load(f)
        c = cls(rundir, d["binary"], overlay=d["overlay"], host=d["host"],
                base_port=d["base_port"], replicas=d["replicas"], successors=d.get("successors"),
                refresh=d.get("refresh"), log_level=d.get("log_level", "info"),
                extra_args=d.get("extra_args", ()), secure=d.get("secure", False),
                **dict({"launcher": d.get("launcher", False)}, **kw))
        c.nodes = [Node.from_json(x, c.rundir) for x in d["nodes"]]
        return c

    # Starting and stopping -----------------------------------------------

    def argv(self, node, bootstrap):
        a = [self.binary, "--overlay", self.overlay, "--listen", node.addr,
             "--admin", node.sock, "--log-level", self.log_level]
        for b in bootstrap:
            a += ["--bootstrap", b.addr]
        if self.replicas is not None:
            a += ["--replicas", str(self.replicas)]
        if self.successors is not None:
            a += ["--successors", str(self.successors)]
        if self.refresh is not None:
            a += ["--refresh", str(self.refresh)]
        if self.secure:
            base = os.path.join(self.rundir, "node%d" % node.index)
            a += ["--ca", os.path.join(self.cadir, "ca.crt"), "--cert", base + ".crt", "--key", base + ".key"]
        elif node.forced_id:
            a += ["--node-id", node.forced_id]
        return a + self.extra_args

    def launch(self, node, bootstrap=()):
        """Start node's process (no waiting); bootstrap: list of Nodes."""
        try:
            os.unlink(node.sock)
        except FileNotFoundError:
            pass
        with open(node.log, "ab") as log:
            log.write(("--- %s start: %s\n" % (time.strftime("%H:%M:%S"),
                                              " ".join(self.argv(node, bootstrap)))).encode())
            log.flush()
            if not self.use_launcher:
                node.proc = subprocess.Popen(
                    self.argv(node, bootstrap), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    close_fds=True, start_new_session=self.new_session,
                    preexec_fn=_pdeathsig if self.die_with_parent else None)
        if self.use_launcher:
            if self.launcher is None:
                self.launcher = Launcher(self.binary, new_session=self.new_session,
                                         die_with_parent=self.die_with_parent)
            node.proc = None
            node.pid = self.launcher.spawn(self.argv(node, bootstrap)[1:], node.log, self.rundir)
            node.launcher = self.launcher
            node.starttime = proc_starttime(node.pid)
        else:
            node.pid = node.proc.pid
            node.launcher = node.starttime = None
        node.state = "alive"
        node.exit_code = None
        node.started_at = time.monotonic()
        return node

    def pick_bootstrap(self, node, extra=1):
        """Node 0 plus `extra` random other running nodes (spreads join load)."""
        if node.index == 0 and not self.alive():
            return []
        boot = [n for n in self.alive() if n is not node]
        first = [n for n in boot if n.index == 0] or boot[:1]
        rest = [n for n in boot if n not in first]
        return first + random.sample(rest, min(extra, len(rest)))

    def wait_up(self, nodes, timeout=30.0, joined=True):
        """Wait until every node answers status (and, with joined, has a
        successor other than itself).  Raises WaitTimeout naming the
        laggards, or RuntimeError if one exited."""
        pending = list(nodes)
        deadline = time.monotonic() + timeout
        while pending:
            dead = [n for n in pending if not n.running(self.binary)]
            if dead:
                n = dead[0]
                raise RuntimeError("%r exited (code %s) while starting; log:\n    %s" %
                                   (n, n.exit_code, "\n    ".join(n.log_tail())))
            sts = parallel_map(lambda n: n.status(3.0), pending, self.workers)
            left = []
            for n, st in zip(pending, sts):
                if not isinstance(st, dict):
                    left.append(n)
                elif joined and not any(s.get("id") != n.id for s in st.get("successors") or []):
                    left.append(n)
            pending = left
            if not pending:
                break
            if time.monotonic() >= deadline:
                st = sts[-1] if sts else None
                raise WaitTimeout("%d nodes not up/joined within %.0fs: %s; last status of %r: %s; its log:\n    %s" %
                                  (len(pending), timeout, pending[:10], pending[-1],
                                   json.dumps(st)[:600] if isinstance(st, dict) else st,
                                   "\n    ".join(pending[-1].log_tail(25))))
            time.sleep(0.2)

    def start(self, n, wave=50, wave_timeout=60.0, progress=None, ids=None):
        """Create and start n more nodes: the first alone, then in waves.
        ids: their node ids (e.g. even_ids(n)) instead of the defaults."""
        if ids is not None and len(ids) != n:
            raise ValueError("%d ids for %d nodes" % (len(ids), n))
        new = [self.add_node(node_id=ids[i] if ids else None) for i in range(n)]
        if not self.alive():
            first = new.pop(0)
            self.launch(first, [])
            self.wait_up([first], wave_timeout, joined=False)
            if progress:
                progress("node 0 up at %s (%s)" % (first.addr, first.id))
        for i in range(0, len(new), wave):
            batch = new[i:i + wave]
            for nd in batch:
                self.launch(nd, self.pick_bootstrap(nd))
            self.wait_up(batch, wave_timeout, joined=True)
            if progress:
                progress("%d nodes up and joined" % len(self.alive()))
        return new

    def restart(self, node, timeout=30.0):
        """Start a stopped/killed node again with its old port and id."""
        if node.running(self.binary):
            raise RuntimeError("%r is still running" % node)
        self.launch(node, self.pick_bootstrap(node))
        self.wait_up([node], timeout, joined=len(self.alive()) > 1)
        return node

    def send_signal(self, node, sig):
        if node.running(self.binary):
            os.kill(node.pid, sig)

    def wait_exit(self, node, timeout):
        """Exit code once node's process ended, or None after timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.running(self.binary):
                if node.launcher is not None:  # reaped: the launcher knows (0 once it is gone)
                    code = node.launcher.exit_code(node.pid)
                    return 0 if code is None else code
                return node.exit_code if node.proc is not None else 0
            time.sleep(0.02)
        return None

    def kill(self, node):
        """kill -9, reaped; node marked dead."""
        self.send_signal(node, signal.SIGKILL)
        self.wait_exit(node, 5.0)
        node.state = "dead"

    def stop(self, node, sig=signal.SIGTERM, timeout=2.0):
        """Graceful stop; returns (exit code or None, seconds).  Escalates to
        SIGKILL after timeout."""
        t0 = time.monotonic()
        self.send_signal(node, sig)
        code = self.wait_exit(node, timeout)
        took = time.monotonic() - t0
        if code is None:
            self.send_signal(node, signal.SIGKILL)
            self.wait_exit(node, 5.0)
        node.state = "stopped"
        return code, took

    def stop_all(self, timeout=3.0):
        """SIGTERM every running node, wait up to timeout, SIGKILL the rest.
        Returns {node: (exit code or None if it had to be killed, seconds)}."""
        running = [n for n in self.nodes if n.pid and n.running(self.binary)]
        t0 = time.monotonic()
        for n in running:
            try:
                os.kill(n.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        res = {}
        deadline = t0 + timeout
        for n in running:
            code = self.wait_exit(n, max(0.0, deadline - time.monotonic()))
            res[n] = (code, time.monotonic() - t0)
        for n in running:
            if res[n][0] is None:
                try:
                    os.kill(n.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.wait_exit(n, 5.0)
            n.state = "stopped"
        for n in self.nodes:
            try:
                os.unlink(n.sock)
            except OSError:
                pass
        return res

    def close_launcher(self):
        """Let the launcher go (the nodes it started run on)."""
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None

    # Observing -------------------------------------------------------------

    def status_all(self, nodes=None, timeout=5.0):
        nodes = self.alive() if nodes is None else nodes
        return dict(zip([n.index for n in nodes],
                        parallel_map(lambda n: n.status(timeout), nodes, self.workers)))

    def ring(self, nodes=None, succ_len=None, timeout=5.0):
        nodes = self.alive() if nodes is None else nodes
        return RingReport(nodes, self.status_all(nodes, timeout), succ_len)

    def wait_consistent(self, timeout=60.0, succ_len=None, full_succ=False):
        """Wait until the ring over the live nodes is consistent (and, with
        full_succ, every successor list is entirely right)."""
        def check():
            self.check_crashed()
            r = self.ring(succ_len=succ_len)
            check.last = r
            if not r.consistent:
                return None
            if full_succ and r.full_succ != len(r.nodes):
                return None
            return r
        check.last = None

        def describe(_):
            r = check.last
            if r is None:
                return "no report"
            s = r.summary()
            if full_succ:
                s += "\n  full successor lists: %d/%d" % (r.full_succ, len(r.nodes))
            return s
        return wait_until(check, timeout, "ring consistent", 0.5, describe)

    def sorted_ids(self):
        return sort_ids(n.id for n in self.alive())

    def by_id(self, hexid):
        for n in self.nodes:
            if n.id == hexid:
                return n
        return None

    def owner_of(self, name):
        return self.by_id(successor_of(key_id(name), self.sorted_ids()))

    def keys_owned_by(self, node, count, prefix="key-", limit=200000):
        """Names whose key id the given node is responsible for."""
        ids = self.sorted_ids()
        out = []
        for i in range(limit):
            name = "%s%d" % (prefix, i)
            if successor_of(key_id(name), ids) == node.id:
                out.append(name)
                if len(out) == count:
                    return out
        raise RuntimeError("could not find %d keys owned by %r" % (count, node))

    def expected_records(self, names):
        """Per node id, how many of these names it should store (owner and
        replicas) on the current live ring."""
        ids = self.sorted_ids()
        want = {i: 0 for i in ids}
        for name in names:
            for i in responsible_nodes(key_id(name), ids, self.replicas or 3):
                want[i] += 1
        return want

    def check_crashed(self):
        """Raise RuntimeError if a node we did not stop has exited."""
        crashed = self.crashed()
        if crashed:
            n = crashed[0]
            raise RuntimeError("%r died (code %s)%s; log:\n    %s" %
                               (n, n.exit_code, " and %d more" % (len(crashed) - 1) if len(crashed) > 1 else "",
                                "\n    ".join(n.log_tail(100))))

    def records(self):
        """Per live node id, its "records" count (None if it did not answer)."""
        self.check_crashed()
        nodes = self.alive()
        sts = self.status_all(nodes)
        return {n.id: (sts[n.index].get("records") if isinstance(sts[n.index], dict) else None)
                for n in nodes}


# Test harness ------------------------------------------------------------------

class Failure(Exception):
    pass


def check(cond, what, detail=None):
    """Assert with a printed line either way."""
    if cond:
        print("ok - %s" % what, flush=True)
        return
    raise Failure(what + ("" if detail is None else ": %s" % (detail,)))


_soft = []


def expect(cond, what, detail=None):
    """Like check() but the test goes on; it still fails at the end."""
    if cond:
        print("ok - %s" % what, flush=True)
        return True
    msg = what + ("" if detail is None else ": %s" % (detail,))
    print("not ok - %s" % msg, flush=True)
    _soft.append(msg)
    return False


def info(msg):
    print("# " + msg, flush=True)


def ca_tool(*args):
    """Run p2psip-ca; returns its stdout, raises with its stderr on failure."""
    tool = find_binary("P2PSIP_CA", "build/node/p2psip-ca")
    if not tool:
        raise RuntimeError("no p2psip-ca binary (build it, or set P2PSIP_CA)")
    r = subprocess.run([tool] + list(args), capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("p2psip-ca %s: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout


def find_binary(env="P2PSIP_BIN", rel="build/node/p2psipd"):
    p = os.environ.get(env)
    if p:
        return p if os.path.exists(p) else None
    p = os.path.join(REPO, rel)
    return p if os.path.exists(p) else None


class Harness:
    """Per-test context: binary, temp run dir, clusters to clean up.

    Use with run(): the test function gets the harness, returns normally to
    pass, raises Failure (or anything else) to fail, or calls skip()."""

    def __init__(self, name, timeout):
        self.name = name
        self.timeout = timeout
        self.clusters = []
        self.extra_procs = []
        self.binary = find_binary()
        self.ctl = find_binary("P2PSIP_CTL", "build/node/p2psipctl")
        self.rundir = None
        self.t0 = time.monotonic()

    def cluster(self, n=0, **kw):
        """A new cluster in its own subdirectory on ports picked for it
        (pick_ports; `ports` of them, at least n), started with n nodes if
        n > 0 (ids: their node ids, e.g. even_ids(n), where the test needs
        the ring's shape)."""
        sub = os.path.join(self.rundir, "c%d" % len(self.clusters))
        nports = max(n, kw.pop("ports", 0), 1)
        wave = kw.pop("wave", 50)
        ids = kw.pop("ids", None)
        if "base_port" not in kw:
            kw["base_port"] = pick_ports(nports, kw.get("host", HOST))
            kw["port_count"] = nports
        c = Cluster(sub, self.binary, **kw)
        self.clusters.append(c)
        if n:
            t0 = time.monotonic()
            c.start(n, wave=wave, ids=ids)
            info("%d nodes started and joined in %.1fs" % (n, time.monotonic() - t0))
        return c

    def elapsed(self):
        return time.monotonic() - self.t0

    def cleanup(self, failed):
        problems = []
        for p in self.extra_procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for c in self.clusters:
            crashed = c.crashed()
            for n in crashed:
                problems.append("%r died unexpectedly (code %s); log:\n    %s" %
                                (n, n.exit_code, "\n    ".join(n.log_tail(100))))
            res = c.stop_all(timeout=3.0)
            bad = [(n, r) for n, r in res.items() if r[0] != 0]
            for n, (code, took) in bad[:5]:
                problems.append("%r on SIGTERM: %s after %.1fs; log:\n    %s" %
                                (n, "still running, killed" if code is None else "exit %s" % code,
                                 took, "\n    ".join(n.log_tail(8 if code in (None, 0) else 100))))
            if len(bad) > 5:
                problems.append("... %d more nodes did not exit 0 on SIGTERM" % (len(bad) - 5))
            c.close_launcher()
        return problems

    def dump_logs(self, limit=4):
        for c in self.clusters:
            shown = 0
            for n in c.nodes:
                if n.state in ("alive", "stopped") and shown < limit:
                    shown += 1
                    print("# --- tail of %s" % n.log)
                    for line in n.log_tail(12):
                        print("#   " + line)


ALLOW_SKIP = "P2PSIP_ALLOW_SKIP"


def skips_allowed():
    """Only where P2PSIP_ALLOW_SKIP=1 may a test skip: a developer's machine
    without root or some tool.  Everywhere else (CI runs as root with every
    tool installed) a test that cannot run fails, so that a lost privilege,
    a tool missing or a probe gone wrong cannot hide a regression."""
    return os.environ.get(ALLOW_SKIP) == "1"


def cannot_run(name, reason):
    """Exit for a test that cannot run here: 77 (skip) if skips are
    allowed, else 1 (fail).  For scripts outside run()."""
    if skips_allowed():
        print("SKIP %s: %s" % (name, reason), flush=True)
        sys.exit(SKIP)
    print("FAIL %s: cannot run: %s (on a machine without it, set %s=1 to skip instead)" %
          (name, reason, ALLOW_SKIP), flush=True)
    sys.exit(1)


def skip(reason):
    """The test cannot run here (a tool or a privilege is missing): a skip
    with P2PSIP_ALLOW_SKIP=1, a failure otherwise (skips_allowed).  Never
    for a defect of this project's own build: that is a Failure."""
    raise _Skip(reason)


class _Skip(Exception):
    pass


def run(name, fn, timeout=120):
    """Run test fn(harness) with a watchdog; exit 0 pass, 77 skip, 1 fail."""
    h = Harness(name, timeout)
    if not h.binary:
        # Our own build's product: never a skip.
        print("FAIL %s: no p2psipd binary at %s (build it, or set P2PSIP_BIN)" %
              (name, os.environ.get("P2PSIP_BIN") or os.path.join(REPO, "build/node/p2psipd")))
        sys.exit(1)
    if os.environ.get("P2PSIP_BIN") and not os.access(h.binary, os.X_OK):
        print("FAIL %s: P2PSIP_BIN=%s is not executable" % (name, h.binary))
        sys.exit(1)

    def on_signal(sig, _frame):
        raise Failure("interrupted by signal %d (watchdog or meson timeout)" % sig)
    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.alarm(int(os.environ.get("P2PSIP_TEST_TIMEOUT", timeout)))
    raise_nofile(4096)
    h.rundir = tempfile.mkdtemp(prefix="p2psip-%s-" % name)
    failed, skipped, rc = False, False, 0
    info("%s: binary %s, run dir %s" % (name, h.binary, h.rundir))
    try:
        fn(h)
    except _Skip as e:
        if skips_allowed():
            skipped = True
            print("SKIP %s: %s" % (name, e))
        else:
            failed = True
            print("FAIL %s: cannot run: %s (on a machine without it, set %s=1 to skip instead)" %
                  (name, e, ALLOW_SKIP))
    except (Failure, WaitTimeout, AdminError, GetError, RuntimeError) as e:
        failed = True
        print("FAIL %s: %s" % (name, e))
    except BaseException as e:
        failed = True
        import traceback
        traceback.print_exc(file=sys.stdout)
        print("FAIL %s: %s: %s" % (name, type(e).__name__, e))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if failed:
            h.dump_logs()
        problems = h.cleanup(failed)
        if _soft and not skipped:
            if not failed:
                print("FAIL %s: %d expectation(s) not met:" % (name, len(_soft)))
            for m in _soft:
                print("  not ok - " + m)
            failed = True
        for p in problems:
            print(("FAIL " if not failed else "also: ") + p)
        if problems and not failed and not skipped:
            failed = True
        if failed and os.environ.get("P2PSIP_KEEP"):
            print("# run dir kept: %s" % h.rundir)
        else:
            shutil.rmtree(h.rundir, ignore_errors=True)
    if failed:
        rc = 1
    elif skipped:
        rc = SKIP
    else:
        print("PASS %s (%.1fs)" % (name, h.elapsed()))
    sys.exit(rc)


# Small request helpers used by the tests ------------------------------------------

def put(node, key, value, ttl=600, vid=None, timeout=10.0):
    """Put and demand ok:true; returns the reply."""
    req = {"cmd": "put", "key": key, "value": value, "ttl": ttl}
    if vid is not None:
        req["value_id"] = vid
    r = node.admin(req, timeout)
    if not r["ok"]:
        raise Failure("put %r via %r: %s" % (key, node, r.get("error")))
    return r


class GetError(Exception):
    """A get answered ok:false for a reason other than "not found"."""


def get_values(node, key, timeout=10.0, local=False):
    """The values list of a get: [] when the node says not found (an empty
    list, or ok:false with an error naming not-found); raises GetError for
    other ok:false replies and AdminError when it does not answer.  local:
    only the node's own copy (where are a key's copies)."""
    req = {"cmd": "get", "key": key}
    if local:
        req["local"] = True
    r = node.admin(req, timeout)
    if not r["ok"]:
        err = str(r.get("error"))
        if re.search(r"not.?found|no such|no value", err, re.I):
            return []
        raise GetError("get %r via %r: %s" % (key, node, err))
    vals = r.get("values")
    if not isinstance(vals, list):
        raise Failure("get %r via %r: values is not a list: %r" % (key, node, r))
    return vals


def lookup(node, key, timeout=10.0):
    r = node.admin({"cmd": "lookup", "key": key}, timeout)
    if not r["ok"]:
        raise Failure("lookup %r via %r: %s" % (key, node, r.get("error")))
    return r
