"""The ssh launcher's pure parts: the ssh command line for a host, the error a failed host reports."""

from __future__ import annotations

import shlex

from alto_bus.deploy.ssh_launch import Ssh, _last_lines
from alto_bus.deploy.topology import HostConfig


def test_the_ssh_command_reaches_the_host_and_runs_alto_in_the_workdir():
    host = HostConfig("b", "198.18.0.2", 0, "u", 2222, None)
    ssh = Ssh(identity="/k/id", options=["StrictHostKeyChecking=no"], connect_timeout=3, python="/py",
              workdir="/w d")
    argv = ssh.argv(host, ["node", "f.toml", "--host", "b"], {"ALTO_LOG_LEVEL": "INFO"})
    assert argv[:2] == ["ssh", "-T"] and "BatchMode=yes" in argv and "ConnectTimeout=3" in argv
    assert argv[argv.index("-i") + 1] == "/k/id"
    assert "StrictHostKeyChecking=no" in argv
    assert (argv[argv.index("-p") + 1], argv[argv.index("-l") + 1]) == ("2222", "u")
    assert argv[-2] == "198.18.0.2"
    assert shlex.split(argv[-1]) == ["cd", "/w d", "&&", "exec", "env", "ALTO_LOG_LEVEL=INFO", "/py", "-m",
                                     "alto_bus", "node", "f.toml", "--host", "b"]


def test_a_host_without_ssh_user_or_port_gets_neither():
    argv = Ssh().argv(HostConfig("a", "198.18.0.1", 0, None, None, None), ["node"], {})
    assert "-p" not in argv and "-l" not in argv and "-i" not in argv


def test_the_last_error_lines_say_why_a_host_failed():
    assert _last_lines("log 1\nerror: host 'b': no key\nmore log\n") == "host 'b': no key"
    assert _last_lines("a\nb\nc") == "b / c"
    assert _last_lines("") == ""
