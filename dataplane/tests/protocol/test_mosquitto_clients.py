"""Interop with the Debian mosquitto-clients command line tools."""

import shutil
import subprocess
import time

import pytest

from helpers import PahoClient, uid, wait_for

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
    reason="mosquitto-clients not installed",
)


class Sub:
    """mosquitto_sub in the background with -d so we can tell when SUBACK arrived."""

    def __init__(self, b, *args):
        # stdbuf: mosquitto_sub uses stdio, which is block-buffered on a pipe;
        # every blocking read below is bounded by the -W timeout of the command.
        prefix = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        self.proc = subprocess.Popen(
            prefix + ["mosquitto_sub", "-h", b.host, "-p", str(b.port), "-d", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            if "received suback" in self.lines[-1].lower():
                return
        self.proc.kill()
        raise AssertionError(f"mosquitto_sub never subscribed: {self.lines}")

    def finish(self, timeout=8):
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"mosquitto_sub did not exit: {self.lines}")
        self.lines += out.decode(errors="replace").splitlines()
        return self.proc.returncode

    def data_lines(self):
        return [l for l in self.lines
                if not l.startswith(("Client ", "Subscribed (mid")) and "SUBSCRIBE" not in l]


def pub(b, *args):
    res = subprocess.run(["mosquitto_pub", "-h", b.host, "-p", str(b.port), *args],
                         capture_output=True, timeout=10)
    assert res.returncode == 0, res.stderr.decode()


def test_sub_v5_receives_pub_v311_qos1(b):
    topic = uid("mc")
    s = Sub(b, "-V", "mqttv5", "-t", topic, "-C", "1", "-W", "5", "-q", "1")
    pub(b, "-V", "mqttv311", "-q", "1", "-t", topic, "-m", "hello-from-pub")
    assert s.finish() == 0
    assert "hello-from-pub" in s.data_lines(), s.lines


def test_sub_v31(b):
    topic = uid("mc31")
    s = Sub(b, "-V", "31", "-t", topic, "-C", "1", "-W", "5")
    pub(b, "-V", "5", "-t", topic, "-m", "to-v31")
    assert s.finish() == 0
    assert "to-v31" in s.data_lines(), s.lines


def test_retained_via_r_flag(b):
    topic = uid("mcr")
    pub(b, "-r", "-q", "1", "-t", topic, "-m", "kept")
    res = subprocess.run(
        ["mosquitto_sub", "-h", b.host, "-p", str(b.port), "-V", "mqttv5", "-t", topic,
         "-C", "1", "-W", "5", "-F", "%t|%r|%p"],
        capture_output=True, timeout=10)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().strip() == f"{topic}|1|kept"
    # clear it: a new subscriber then times out with nothing (-W 1 -> exit code 27)
    pub(b, "-r", "-q", "1", "-t", topic, "-n")
    res = subprocess.run(
        ["mosquitto_sub", "-h", b.host, "-p", str(b.port), "-t", topic, "-C", "1", "-W", "1"],
        capture_output=True, timeout=10)
    assert res.stdout == b""


def test_qos2_and_user_property_to_paho(b):
    topic = uid("mcup")
    c = PahoClient(b).connect()
    c.subscribe(topic, qos=2)
    pub(b, "-V", "mqttv5", "-q", "2", "-t", topic, "-m", "props",
        "-D", "publish", "user-property", "origin", "cli")
    m = c.wait_messages(1)[0]
    assert (m.payload, m.qos) == (b"props", 2)
    assert ("origin", "cli") in m.properties.UserProperty


def test_paho_to_mosquitto_sub_multiple(b):
    topic = uid("mcm")
    s = Sub(b, "-V", "mqttv311", "-t", f"{topic}/#", "-C", "3", "-W", "5", "-v")
    p = PahoClient(b).connect()
    for i in range(3):
        p.publish(f"{topic}/{i}", b"m%d" % i, qos=1)
    assert s.finish() == 0
    assert [l for l in s.data_lines() if l.startswith(topic)] == [f"{topic}/{i} m{i}" for i in range(3)]
