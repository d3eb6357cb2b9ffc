"""Network namespaces for the integration tests: a public segment, and a
private one behind a masquerading router, as a home user's NAT puts it
(Python 3 standard library; needs root, ip and iptables).

    public segment (192.0.2.0/24, TEST-NET-1)     private segment (198.51.100.0/24, TEST-NET-2)
    [pub] TAGbr (bridge) --- TAGa1 [rtr] TAGb1 --- TAGb0 [priv]
          .2... |                 .1     .1             .2...
                +--- TAGhNb --- [TAGNAME] one host per add_host(), .x

The router masquerades the private segment behind 192.0.2.1 and drops
every new connection from outside in: a NAT, not just a router.  The
public side is a namespace of its own (TAGpub), or, with public_ns=False,
the namespace the test already runs in (after sip_util.enter_netns(), so
that named and kamailio on its loopback are on the public segment too);
add_host() puts more hosts on the segment, each with its addresses alone
(a phone's ICE candidates are the addresses it sees).

Names are TAG + a short suffix: pick a TAG unique to the test, at most 9
characters, as interface names hold 15."""

import os
import subprocess

PUBLIC_PREFIX = "192.0.2."
PRIVATE_PREFIX = "198.51.100."
ROUTER_PUBLIC = PUBLIC_PREFIX + "1"
ROUTER_PRIVATE = PRIVATE_PREFIX + "1"


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def private_run_dir():
    """Give this mount namespace its own /run/netns, so the namespaces made
    here are named nowhere outside it (call after sip_util.enter_netns)."""
    os.makedirs("/run/netns", exist_ok=True)
    sh("mount", "-t", "tmpfs", "tmpfs", "/run/netns")


class Nat:
    """The sides: where is "pub", "rtr", "priv" or a host's name."""

    def __init__(self, tag, public_ns=True):
        self.tag = tag
        self.ns = {"pub": tag + "pub" if public_ns else None, "rtr": tag + "rtr", "priv": tag + "prv"}
        self.hosts = 0

    def prefix(self, where):
        """The argv prefix that runs a command on that side."""
        n = self.ns[where]
        return ["ip", "netns", "exec", n] if n else []

    def run(self, where, *args, check=True):
        return sh(*(self.prefix(where) + list(args)), check=check)

    def _plug(self, where, dev, peer, addrs, gw):
        """A veth pair made here: dev moves to side where, with addrs/24
        and a default route via gw; peer stays for the caller to place."""
        sh("ip", "link", "add", dev, "type", "veth", "peer", "name", peer)
        if self.ns[where]:
            sh("ip", "link", "set", dev, "netns", self.ns[where])
        for a in addrs:
            self.run(where, "ip", "addr", "add", a + "/24", "dev", dev)
        self.run(where, "ip", "link", "set", dev, "up")
        if gw not in addrs:
            self.run(where, "ip", "route", "add", "default", "via", gw)

    def _bridge(self, dev):
        """Put dev (made here) on the public segment's bridge, up."""
        if self.ns["pub"]:
            sh("ip", "link", "set", dev, "netns", self.ns["pub"])
        self.run("pub", "ip", "link", "set", dev, "master", self.tag + "br")
        self.run("pub", "ip", "link", "set", dev, "up")

    def setup(self, public_addrs=(PUBLIC_PREFIX + "2",), private_addrs=(PRIVATE_PREFIX + "2",)):
        t = self.tag
        for n in self.ns.values():
            if n:
                sh("ip", "netns", "add", n)
        for n in self.ns:
            self.run(n, "ip", "link", "set", "lo", "up")
        # The public segment: a bridge with the public side's addresses,
        # the router's port and add_host()'s hosts on it.
        self.run("pub", "ip", "link", "add", t + "br", "type", "bridge")
        for a in public_addrs:
            self.run("pub", "ip", "addr", "add", a + "/24", "dev", t + "br")
        self.run("pub", "ip", "link", "set", t + "br", "up")
        self.run("pub", "ip", "route", "add", "default", "via", ROUTER_PUBLIC)
        self._plug("rtr", t + "a1", t + "a0", [ROUTER_PUBLIC], ROUTER_PUBLIC)
        self._bridge(t + "a0")
        self._plug("priv", t + "b0", t + "b1", private_addrs, ROUTER_PRIVATE)
        sh("ip", "link", "set", t + "b1", "netns", self.ns["rtr"])
        self.run("rtr", "ip", "addr", "add", ROUTER_PRIVATE + "/24", "dev", t + "b1")
        self.run("rtr", "ip", "link", "set", t + "b1", "up")
        self.run("rtr", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.run("rtr", "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", PRIVATE_PREFIX + "0/24",
                 "-o", t + "a1", "-j", "MASQUERADE")
        # A NAT, not just a router: nothing from outside may open a connection in.
        self.run("rtr", "iptables", "-A", "FORWARD", "-i", t + "a1", "-o", t + "b1", "-m", "conntrack",
                 "--ctstate", "NEW", "-j", "DROP")

    def open_port(self, proto, ip, port):
        """Let new connections from outside in to ip:port on the private
        side (a home router's port forward, with no address translation:
        the public side routes to the private segment through the router)."""
        t = self.tag
        self.run("rtr", "iptables", "-I", "FORWARD", "-i", t + "a1", "-o", t + "b1", "-p", proto, "-d", ip,
                 "--dport", str(port), "-j", "ACCEPT")

    def add_host(self, name, addrs):
        """A host of its own on the public segment: namespace TAG+name
        holding addrs alone; prefix(name) runs commands there."""
        self.ns[name] = self.tag + name
        sh("ip", "netns", "add", self.ns[name])
        self.run(name, "ip", "link", "set", "lo", "up")
        self.hosts += 1
        dev = "%sh%d" % (self.tag, self.hosts)
        self._plug(name, dev + "a", dev + "b", addrs, ROUTER_PUBLIC)
        self._bridge(dev + "b")

    def teardown(self):
        for n in self.ns.values():
            if n:
                sh("ip", "netns", "del", n, check=False)
        if not self.ns["pub"]:
            # Deleting one end of a veth deletes the other.
            for dev in [self.tag + "br", self.tag + "a0"] + ["%sh%db" % (self.tag, i)
                                                             for i in range(1, self.hosts + 1)]:
                sh("ip", "link", "del", dev, check=False)

CLONE_NEWNET = 0x40000000
_libc = None


def socket_in(name, family=2, kind=1):
    """A socket made in namespace `name` (it stays there: a test in one
    namespace can talk to a process in another without routing between
    them).  Default AF_INET, SOCK_STREAM."""
    import ctypes
    import socket
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if not name:
        return socket.socket(family, kind)
    here = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open("/run/netns/" + name, os.O_RDONLY)
    try:
        if _libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns %s" % name)
        try:
            return socket.socket(family, kind)
        finally:
            if _libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)
        os.close(there)
