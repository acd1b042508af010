"""CURVE key files, and the guard that lets allowed keys in and logs every refusal.

The socket tests use loopback tcp with bounded waits (CURVE does not apply to inproc).
"""

from __future__ import annotations

import logging
import os
import time

import pytest
import zmq

from alto_bus.net import curve as keys
from alto_bus.net.sockets import bound_address, make_socket


def test_alto_keys_makes_a_pair_whose_secret_only_its_owner_reads(tmp_path):
    public_file, secret_file = keys.create(tmp_path, "gpu1")
    assert public_file.name == "gpu1.key" and secret_file.name == "gpu1.key_secret"
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    assert "secret-key" not in public_file.read_text()
    pair = keys.load_pair(public_file)  # the public name finds its secret sibling
    assert pair == keys.load_pair(secret_file)
    assert keys.load_public(public_file) == pair.public == zmq.curve_public(pair.secret)
    assert pair.secret.decode() not in repr(pair)
    with pytest.raises(keys.KeyFileError, match="already exists"):
        keys.create(tmp_path, "gpu1")
    keys.create(tmp_path, "gpu1", force=True)
    assert keys.load_public(public_file) != pair.public


def test_the_files_are_what_zmq_auth_reads(tmp_path):
    import zmq.auth

    public_file, secret_file = keys.create(tmp_path, "c")
    assert zmq.auth.load_certificate(secret_file) == (keys.load_pair(secret_file).public,
                                                      keys.load_pair(secret_file).secret)
    pub, sec = zmq.auth.create_certificates(str(tmp_path), "z")
    assert keys.load_pair(sec).public == keys.load_public(pub)


def test_missing_and_wrong_key_files_are_named(tmp_path):
    public_file, secret_file = keys.create(tmp_path, "a")
    cases = {
        tmp_path / "nope.key": "no such key file",
        tmp_path: "is a directory",
    }
    garbage = tmp_path / "garbage.key"
    garbage.write_text("public-key = \"not a key\"\n")
    cases[garbage] = "not a CURVE key"
    empty = tmp_path / "empty.key"
    empty.write_text("# nothing\n")
    cases[empty] = "no public key"
    for path, words in cases.items():
        with pytest.raises(keys.KeyFileError) as err:
            keys.load_public(path)
        assert str(path) in str(err.value) and words in str(err.value)
    with pytest.raises(keys.KeyFileError, match="nope.key_secret: no such key file"):
        keys.load_pair(tmp_path / "nope.key")
    # A secret file whose public line belongs to another pair.
    other_pub, _ = keys.create(tmp_path, "b")
    mixed = tmp_path / "mixed.key_secret"
    mixed.write_text(secret_file.read_text().replace(keys.load_public(public_file).decode(),
                                                     keys.load_public(other_pub).decode()))
    with pytest.raises(keys.KeyFileError, match="does not belong"):
        keys.load_pair(mixed)
    with pytest.raises(keys.KeyFileError, match="no secret key"):
        keys.load_pair(public_file.rename(tmp_path / "p.key_secret"))
    with pytest.raises(keys.KeyFileError, match="no such directory"):
        keys.load_allowed(tmp_path / "allowed")


def test_allowed_keys_are_every_public_file_of_a_directory(tmp_path):
    allowed = tmp_path / "allowed"
    for name in ("c1", "c2"):
        keys.create(allowed, name)
    (allowed / "README").write_text("not a key")
    found = keys.load_allowed(allowed)
    assert sorted(found.values()) == ["c1.key", "c2.key"]


def test_an_address_carries_its_servers_key():
    pub, _ = zmq.curve_keypair()
    addr = keys.with_key("tcp://198.18.0.2:4000", pub)
    assert keys.split_key(addr) == ("tcp://198.18.0.2:4000", pub)
    assert keys.split_key("tcp://127.0.0.1:1") == ("tcp://127.0.0.1:1", None)


# -- the guard over real sockets --------------------------------------------------------


@pytest.fixture
def pki(tmp_path):
    allowed = tmp_path / "allowed"
    for name in ("server", "friend", "stranger"):
        keys.create(tmp_path, name)
    keys.create(allowed, "client")
    os.link(tmp_path / "friend.key", allowed / "friend.key")
    return tmp_path


def roundtrip(server: zmq.Socket, client: zmq.Socket, timeout: float = 2.0) -> bool:
    client.send(b"ping")
    return bool(server.poll(timeout * 1000))


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def test_only_allowed_keys_get_through_and_refusals_are_logged(pki, ctx, caplog):
    caplog.set_level(logging.WARNING, logger="alto.keys")
    server_curve = keys.process_curve(pki / "server.key", pki / "server.key", pki / "allowed")
    pull = make_socket(ctx, zmq.PULL, bind="tcp://127.0.0.1:0", curve=server_curve.server("test inbox"))
    address = keys.with_key(bound_address(pull), server_curve.pair.public)
    friend = keys.process_curve(pki / "friend.key", pki / "server.key", None)
    stranger = keys.process_curve(pki / "stranger.key", pki / "server.key", None)

    ok = make_socket(ctx, zmq.PUSH, connect=address, curve=friend.to_peer("friend"))
    assert roundtrip(pull, ok)
    assert pull.recv() == b"ping"
    ok.close()

    t0 = time.monotonic()
    bad = make_socket(ctx, zmq.PUSH, connect=address, curve=stranger.to_peer("stranger"))
    plain = make_socket(ctx, zmq.PUSH, connect=keys.split_key(address)[0])
    wrong_server = make_socket(ctx, zmq.PUSH, connect=keys.split_key(address)[0],
                               curve=keys.CurveClient(friend.pair, stranger.pair.public, "wrong server key"))
    bad.send(b"intruder")
    plain.send(b"intruder")
    wrong_server.send(b"intruder")
    assert not pull.poll(1500), "a frame from a peer without an allowed key reached the server"
    deadline = time.monotonic() + 5
    while sum(keys.refusals().values()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    text = caplog.text
    assert f"key {stranger.pair.public.decode()} is not allowed" in text and "test inbox" in text
    assert "not use CURVE" in text  # a mismatch, or the plain peer hung up first
    assert "the server refused this process's key" in text          # the stranger's own view
    assert time.monotonic() - t0 < 6
    for sock in (bad, plain, wrong_server):
        sock.close()


def test_a_refused_peer_retrying_is_logged_once_per_interval(pki, ctx, caplog):
    # A client that dials with the wrong server key retries at its reconnect interval.
    caplog.set_level(logging.WARNING, logger="alto.keys")
    server_curve = keys.process_curve(pki / "server.key", pki / "server.key", pki / "allowed")
    pull = make_socket(ctx, zmq.PULL, bind="tcp://127.0.0.1:0", curve=server_curve.server("quiet inbox"))
    friend = keys.process_curve(pki / "friend.key", pki / "server.key", None)
    bad = make_socket(ctx, zmq.PUSH, connect=bound_address(pull), options={zmq.RECONNECT_IVL: 20},
                      curve=keys.CurveClient(friend.pair, friend.pair.public, "retrying"))
    bad.send(b"x")
    guard = keys.Guard.of(ctx)
    deadline = time.monotonic() + 5
    while guard.refused["quiet inbox"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert guard.refused["quiet inbox"] >= 5
    assert caplog.text.count("quiet inbox") == 1
    assert "wrong server key" in caplog.text
    assert not pull.poll(0)
    bad.close()
    pull.close()
