"""Real phones for the integration tests and the demo: baresip (Debian's
1.0) driven over its ctrl_tcp interface (Python 3 standard library).

A Phone is one baresip with its own configuration directory (`baresip -f
DIR`): no sound card, a WAV tone as its microphone (module aufile; the
file's rate must be the codec's, 8 kHz for G.711, and the call ends when
the file does, so it is long), the decoded audio written to WAV files by
module sndfile (DIR/rec/dump-TIME-dec.wav, one per call), and no player at
all (without an auplay module baresip decodes into the filters and plays
nothing).  Commands (dial, hangup, ...) and events (REGISTER_OK,
CALL_ESTABLISHED, CALL_CLOSED, ...) go over ctrl_tcp: netstrings carrying
JSON.  The account line comes from the caller, typically from
`p2psipctl phone-config USER --format baresip`.

baresip facts this relies on (1.0, checked in its source):
- `net_interface` takes an interface name or an IP; a phone binds SIP and
  RTP there (on a loopback testbed it must be given, or baresip picks an
  interface address nobody routes to); `sip_listen IP:PORT` takes PORT for
  UDP and TCP and PORT+1 for TLS, so phones on one IP need ports 2 apart;
- module ice skips loopback and link-local addresses as host candidates,
  so ICE needs a real interface address (network namespaces here);
- one STUN/TURN server per account: `stunserver=turn:HOST:PORT`,
  `stunuser=`, `stunpass=` (without them the SIP user name and auth_pass);
  parameter values end at `;` or a blank and are not unquoted;
- `medianat=turn` relays every call through that server (channels to the
  other side's SDP address); `medianat=ice` makes it one ICE candidate
  (README "Phones" on why the tests use turn);
- `answermode=auto` answers incoming calls at once;
- ctrl_tcp events: REGISTER_OK/FAIL, CALL_INCOMING, CALL_ESTABLISHED,
  CALL_RTPESTAB (the first RTP packet came in), CALL_CLOSED.

Audio checks: tone() writes a sine, dominant() finds the strongest of some
frequencies in a recording with a Goertzel filter, so a check can say
"bob heard 440 Hz (alice's tone), not silence and not his own 880 Hz"."""

import json
import math
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import time
import wave

import sip_util

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
MODULE_PATH = "/usr/lib/baresip/modules"
RATE = 8000  # G.711


# Audio ---------------------------------------------------------------------------

def tone(path, hz, seconds, rate=RATE, amplitude=0.5):
    """A mono 16-bit sine WAV."""
    n = int(seconds * rate)
    frames = struct.pack("<%dh" % n, *(int(amplitude * 32767 * math.sin(2 * math.pi * hz * i / rate))
                                      for i in range(n)))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def read_wav(path):
    """(rate, samples of the first channel) of a 16-bit WAV."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError("%s: %d-byte samples" % (path, w.getsampwidth()))
        ch, rate, n = w.getnchannels(), w.getframerate(), w.getnframes()
        data = w.readframes(n)
    samples = struct.unpack("<%dh" % (len(data) // 2), data)
    return rate, list(samples[::ch])


def power(samples, rate, hz):
    """Mean power of one frequency in samples (Goertzel), normalised so a
    full-scale sine gives about 0.25."""
    if not samples:
        return 0.0
    k = 2 * math.cos(2 * math.pi * hz / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x / 32768.0 + k * s1 - s2, s1
    p = s1 * s1 + s2 * s2 - k * s1 * s2
    return p / (len(samples) ** 2)


def rms(samples):
    return math.sqrt(sum(x * x for x in samples) / len(samples)) / 32768.0 if samples else 0.0


def analyse(path, freqs, skip_s=0.3, frame_s=0.02, loud=0.1):
    """What a recording holds: seconds, rms, the power of each frequency in
    freqs and the strongest of them, and coverage: the share of 20 ms
    frames louder than rms `loud` (audio that kept flowing, not a burst).
    The first skip_s seconds, where jitter buffers fill, are left out."""
    rate, s = read_wav(path)
    body = s[int(skip_s * rate):]
    p = {f: power(body, rate, f) for f in freqs}
    n = max(1, int(frame_s * rate))
    frames = [body[i:i + n] for i in range(0, len(body) - n + 1, n)]
    return {"seconds": round(len(s) / rate, 2), "rms": round(rms(body), 4),
            "power": {f: round(v, 5) for f, v in p.items()},
            "dominant": max(p, key=p.get) if body else None,
            "coverage": round(sum(rms(f) > loud for f in frames) / len(frames), 3) if frames else 0.0}


# ctrl_tcp ------------------------------------------------------------------------

def netstring(data):
    return b"%d:%s," % (len(data), data)


def split_netstrings(buf):
    """(messages, rest) of a byte buffer."""
    out = []
    while True:
        m = re.match(rb"(\d{1,7}):", buf)
        if not m:
            return out, buf
        n, start = int(m.group(1)), m.end()
        if len(buf) < start + n + 1:
            return out, buf
        if buf[start + n:start + n + 1] != b",":
            raise ValueError("bad netstring from baresip: %r" % buf[:80])
        out.append(buf[start:start + n])
        buf = buf[start + n + 1:]


class PhoneError(Exception):
    pass


class Phone:
    """One baresip.  prefix runs it elsewhere (["ip", "netns", "exec", NS]);
    connect(sockfn) takes a function that makes a TCP socket where the phone
    is (netns.socket_in), by default here.

    accounts: account lines; ip: the address it binds (net_interface);
    sip_port, ctrl_port: its SIP and control ports; tone_hz: the
    frequency of its microphone; rtp: (min, max) RTP ports; dns: a DNS
    server "IP:PORT" for RFC 3263 (calls to domain names)."""

    def __init__(self, name, rundir, ip, sip_port, ctrl_port, accounts, tone_hz, prefix=(),
                 rtp=(10000, 10099), dns=None, tone_s=60, verbose=True):
        self.name, self.ip, self.sip_port, self.ctrl_port = name, ip, sip_port, ctrl_port
        self.tone_hz, self.prefix = tone_hz, list(prefix)
        self.dir = os.path.join(rundir, "phone-" + name)
        self.rec = os.path.join(self.dir, "rec")
        os.makedirs(self.rec, exist_ok=True)
        self.log = os.path.join(self.dir, "baresip.log")
        self.tone = os.path.join(self.dir, "tone.wav")
        tone(self.tone, tone_hz, tone_s)
        self.write_config(rtp, dns)
        self.set_accounts(accounts)
        self.verbose = verbose
        self.proc = None
        self.sock = None
        self.buf = b""
        self.events = []
        self.responses = []

    def write_config(self, rtp, dns):
        lines = [
            "poll_method epoll",
            "sip_listen %s:%d" % (self.ip, self.sip_port),
            "net_interface %s" % self.ip,
            "call_local_timeout 30",
            "call_max_calls 4",
            "audio_source aufile,%s" % self.tone,
            "audio_buffer 20-160",
            "ausrc_format s16", "auplay_format s16", "auenc_format s16", "audec_format s16",
            "rtp_ports %d-%d" % rtp,
            "rtcp_mux yes",
            "jitter_buffer_delay 5-10",
            "module_path %s" % MODULE_PATH,
            "module g711.so",
            "module aufile.so",
            "module sndfile.so",
            "module stun.so",
            "module turn.so",
            "module ice.so",
            "module ctrl_tcp.so",
            "module_tmp account.so",
            "module_app menu.so",
            "ctrl_tcp_listen %s:%d" % (self.ip, self.ctrl_port),
            "snd_path %s" % self.rec,
        ]
        if dns:
            lines.append("dns_server %s" % dns)
        with open(os.path.join(self.dir, "config"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def set_accounts(self, accounts):
        """Write the accounts file (read at start)."""
        with open(os.path.join(self.dir, "accounts"), "w") as f:
            f.write("\n".join(accounts) + "\n")
        self.accounts = list(accounts)

    # Process -------------------------------------------------------------------

    def start(self, sockfn=None, timeout=10.0):
        argv = self.prefix + [BARESIP, "-f", self.dir] + (["-v"] if self.verbose else [])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         close_fds=True)
        self.connect(sockfn, timeout)
        return self

    def connect(self, sockfn, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PhoneError("%s: baresip exited (%s): %s" % (self.name, self.proc.returncode,
                                                                  " | ".join(self.log_tail(8))))
            s = sockfn() if sockfn else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(1.0)
            try:
                s.connect((self.ip, self.ctrl_port))
                self.sock = s
                return
            except OSError:
                s.close()
            if time.monotonic() > deadline:
                raise PhoneError("%s: no ctrl_tcp on %s:%d within %.0fs: %s" % (
                    self.name, self.ip, self.ctrl_port, timeout, " | ".join(self.log_tail(8))))
            time.sleep(0.05)

    def stop(self, timeout=3.0):
        if self.sock:
            try:
                self.sock.sendall(netstring(json.dumps({"command": "quit"}).encode()))
            except OSError:
                pass
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sock:
            self.sock.close()
            self.sock = None

    # The harness kills what is left at the end (p2p.Harness.extra_procs).
    def poll(self):
        return self.proc.poll() if self.proc else 0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout=None):
        return self.proc.wait(timeout) if self.proc else 0

    def log_tail(self, n=20):
        return sip_util.tail(self.log, n)

    # Control -------------------------------------------------------------------

    def _pump(self, timeout):
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return
        data = self.sock.recv(65536)
        if not data:
            raise PhoneError("%s: ctrl_tcp closed: %s" % (self.name, " | ".join(self.log_tail(8))))
        msgs, self.buf = split_netstrings(self.buf + data)
        for m in msgs:
            j = json.loads(m)
            (self.events if j.get("event") else self.responses).append(j)

    def command(self, command, params=None, timeout=5.0):
        """Run a command (menu's long names: dial, hangup, accept, reginfo,
        ...); returns its response {"ok", "data"}."""
        self.responses = []
        req = {"command": command, "token": "t%d" % time.monotonic_ns()}
        if params is not None:
            req["params"] = params
        self.sock.sendall(netstring(json.dumps(req).encode()))
        deadline = time.monotonic() + timeout
        while True:
            for r in self.responses:
                if r.get("token") == req["token"]:
                    return r
            left = deadline - time.monotonic()
            if left <= 0:
                raise PhoneError("%s: no answer to %s within %.0fs" % (self.name, command, timeout))
            self._pump(min(left, 0.2))

    def wait_event(self, etype, timeout, what=None, since=0):
        """The first event of this type (e.g. "CALL_ESTABLISHED") after
        index since in self.events; raises after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events[since:]:
                if e.get("type") == etype:
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                raise PhoneError("%s: no %s within %.0fs (%s); events: %s; log: %s" % (
                    self.name, etype, timeout, what or "", [(e.get("type"), e.get("param"))
                                                            for e in self.events[-8:]],
                    " | ".join(self.log_tail(10))))
            self._pump(min(left, 0.2))

    def mark(self):
        """An index into self.events: wait_event(..., since=mark) looks only
        at what comes after it."""
        self._pump(0)
        return len(self.events)

    def registered(self, timeout):
        """Wait for REGISTER_OK (or, if it came before ctrl_tcp was
        connected, see it in reginfo)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("type") == "REGISTER_OK" for e in self.events):
                return True
            if any(e.get("type") == "REGISTER_FAIL" for e in self.events):
                return False
            info = re.sub(r"\x1b\[[0-9;]*m", "", self.command("reginfo").get("data", ""))
            if re.search(r"\bOK\b", info):
                return True
            self._pump(0.3)
        return False

    def dial(self, uri):
        r = self.command("dial", uri)
        if not r.get("ok"):
            raise PhoneError("%s: dial %s: %s" % (self.name, uri, r))
        return r

    def hangup(self):
        return self.command("hangup")

    def recordings(self, kind="dec"):
        """Paths of this phone's recordings of the given kind, oldest first."""
        names = sorted(n for n in os.listdir(self.rec) if n.endswith("-%s.wav" % kind))
        return [os.path.join(self.rec, n) for n in names]

    def archive_recordings(self, label):
        """Move the recordings into rec/LABEL/ (one call's), so the next
        call's are told apart even within the same second; returns them."""
        d = os.path.join(self.rec, label)
        os.makedirs(d, exist_ok=True)
        out = []
        for p in self.recordings("dec") + self.recordings("enc"):
            dst = os.path.join(d, os.path.basename(p))
            os.replace(p, dst)
            out.append(dst)
        return out

    def __repr__(self):
        return "phone %s (%s:%d)" % (self.name, self.ip, self.sip_port)
