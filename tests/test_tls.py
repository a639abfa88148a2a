"""``rediss://`` against a real redis-server that speaks only TLS.

The test generates its own CA, a server certificate for 127.0.0.1/localhost
and a client certificate with the ``openssl`` command-line tool, and starts
redis-server with ``--port 0`` (no plain TCP at all) and a TLS port. Every
connection that works is therefore a TLS connection. Both transports are
covered: certificates from the settings, a client without its certificate
(refused with the library's own error), and ``ssl_cert_reqs="none"`` against
a server that does not ask for client certificates.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest
import redis

from redis_events import (
    ConfigurationError,
    EventPublisher,
    EventSubscriber,
    PermissionDeniedError,
    RedisUnavailableError,
)
from tests.helpers import wait_until
from tests.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.redis

TRANSPORTS = ["pubsub", "stream"]
EVENTS = 5
# A stream subscriber's read blocks this long at most; stops stay quick.
FAST: dict[str, Any] = {"block_seconds": 0.5}

_CA_EXTENSIONS = """\
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
"""
_LEAF_EXTENSIONS = """\
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage={usage}
subjectAltName={names}
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
"""


@dataclass(frozen=True)
class Certificates:
    """Paths of a test CA and the certificates and keys it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(*args: str) -> None:
    """Run the ``openssl`` command-line tool; fail the test when it fails."""
    binary = shutil.which("openssl")
    assert binary is not None, "the TLS tests need the openssl command-line tool"
    done = subprocess.run([binary, *args], capture_output=True, check=False, text=True)
    assert done.returncode == 0, f"openssl {args[0]} failed: {done.stderr}"


def make_certificates(directory: Path) -> Certificates:
    """Create a CA, a server and a client certificate (EC P-256) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    ca_ext = directory / "ca.ext"
    ca_ext.write_text(_CA_EXTENSIONS)
    openssl(
        "req", "-x509", "-new", *ec, "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=redis-events test CA",
        "-extensions", "v3_ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    leaves = {
        "server": ("serverAuth", "IP:127.0.0.1,DNS:localhost"),
        "client": ("clientAuth", "DNS:redis-events-test-client"),
    }
    for name, (usage, names) in leaves.items():
        key, csr = directory / f"{name}.key", directory / f"{name}.csr"
        ext = directory / f"{name}.ext"
        ext.write_text(_LEAF_EXTENSIONS.format(usage=usage, names=names))
        openssl(
            "req", "-new", *ec, "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN=redis-events test {name}",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext),
            "-out", str(directory / f"{name}.crt"),
        )  # fmt: skip

    return Certificates(
        ca=ca,
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


class TLSRedisServer(RedisServer):
    """A redis-server that listens on a TLS port only (``--port 0``).

    ``client()`` (used by the readiness check, ``shutdown_nosave`` and the
    tests' own inspection) connects with the CA and the client certificate.
    """

    def __init__(
        self,
        directory: Path,
        certificates: Certificates,
        *,
        auth_clients: Literal["yes", "optional"],
    ) -> None:
        port = free_port()
        # The last --port wins: the plain TCP listener is switched off.
        args = (
            "--save", "", "--appendonly", "no", "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(certificates.server_cert),
            "--tls-key-file", str(certificates.server_key),
            "--tls-ca-cert-file", str(certificates.ca),
            "--tls-auth-clients", auth_clients,
        )  # fmt: skip
        super().__init__(directory, port=port, args=args)
        self.certificates = certificates

    @property
    def url(self) -> str:
        """The ``rediss://`` URL of this server, database 0."""
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self, **options: object) -> redis.Redis:
        """Return a synchronous TLS client with the client certificate."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=5,
            decode_responses=True,
            ssl=True,
            ssl_ca_certs=str(self.certificates.ca),
            ssl_certfile=str(self.certificates.client_cert),
            ssl_keyfile=str(self.certificates.client_key),
            **options,  # type: ignore[arg-type]
        )


def start_tls_server(server: TLSRedisServer) -> TLSRedisServer:
    """Start ``server``; say plainly when this redis-server has no TLS."""
    try:
        return server.start()
    except RuntimeError as exc:
        pytest.fail(
            "redis-server could not start with TLS options; it may be built "
            f"without TLS support (BUILD_TLS=yes): {exc}"
        )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, a server and a client certificate made for this module."""
    return make_certificates(tmp_path_factory.mktemp("tls-certificates"))


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[TLSRedisServer]:
    """A TLS-only redis-server that requires client certificates."""
    directory = tmp_path_factory.mktemp("redis-tls")
    server = start_tls_server(
        TLSRedisServer(directory, certificates, auth_clients="yes")
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_optional_server(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[TLSRedisServer]:
    """A TLS-only redis-server for which client certificates are optional."""
    directory = tmp_path_factory.mktemp("redis-tls-optional")
    server = start_tls_server(
        TLSRedisServer(directory, certificates, auth_clients="optional")
    )
    yield server
    server.stop()


def with_client_certificate(certificates: Certificates) -> dict[str, Any]:
    """Return the settings that verify the server and present our certificate."""
    return {
        "ssl_ca_certs": str(certificates.ca),
        "ssl_certfile": str(certificates.client_cert),
        "ssl_keyfile": str(certificates.client_key),
    }


async def round_trip(url: str, topic: str, transport: str, **tls: Any) -> list[int]:
    """Publish ``EVENTS`` events to ``topic`` and return what a subscriber got."""
    received: list[int] = []
    sub = EventSubscriber(url, transport=transport, **tls, **FAST)

    @sub.on(topic)
    async def record(topic: str, event: dict[str, Any]) -> None:
        received.append(event["n"])

    async with sub, EventPublisher(url, transport=transport, **tls) as pub:
        for n in range(EVENTS):
            await pub.publish(topic, {"n": n})

        await wait_until(lambda: len(received) >= EVENTS)

    return received


def test_the_test_server_has_no_plain_tcp_listener(tls_server: TLSRedisServer) -> None:
    client = tls_server.client()
    try:
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("tls-port") == {"tls-port": str(tls_server.port)}
        assert client.config_get("tls-auth-clients") == {"tls-auth-clients": "yes"}
    finally:
        client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_publisher_and_subscriber_work_over_tls_with_a_client_certificate(
    tls_server: TLSRedisServer, certificates: Certificates, uid: str, transport: str
) -> None:
    topic = f"tls-{transport}-{uid}"
    received = await round_trip(
        tls_server.url, topic, transport, **with_client_certificate(certificates)
    )

    assert received == list(range(EVENTS))


def sockets_open_to(port: int) -> int:
    """Count this process's open TCP sockets whose remote end is ``port``.

    Reads ``/proc``: a socket counts from the moment it is created until its
    file descriptor is closed, whatever state TCP is in.
    """
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])

    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] in inodes:
                count += 1

    return count


async def test_a_stopped_pubsub_subscriber_has_closed_its_tls_socket(
    tls_server: TLSRedisServer, certificates: Certificates, uid: str
) -> None:
    # redis-py's PubSub.aclose() does not wait for the TLS closing handshake,
    # so the socket outlives the stop, and an event loop ending right after
    # finds it still open (a ResourceWarning). The subscriber waits for it.
    topic = f"tls-close-{uid}"
    await round_trip(
        tls_server.url, topic, "pubsub", **with_client_certificate(certificates)
    )

    assert sockets_open_to(tls_server.port) == 0


@pytest.mark.fault
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_without_its_certificate_gets_the_librarys_own_error(
    tls_server: TLSRedisServer, certificates: Certificates, uid: str, transport: str
) -> None:
    topic = f"tls-no-cert-{transport}-{uid}"
    # The server is verified, but no client certificate is presented.
    options: dict[str, Any] = {
        "transport": transport,
        "ssl_ca_certs": str(certificates.ca),
        "publish_retry_timeout": 0.2,
        **FAST,
    }
    library_errors = (RedisUnavailableError, PermissionDeniedError)
    pub = EventPublisher(tls_server.url, **options)
    with pytest.raises(library_errors) as connecting:
        await pub.connect()

    with pytest.raises(library_errors) as publishing:
        await pub.publish(topic, {"n": 1})

    await pub.close()
    sub = EventSubscriber(tls_server.url, **options)

    @sub.on(topic)
    async def never(topic: str, event: object) -> None:
        raise AssertionError("no event can arrive without a connection")

    with pytest.raises(library_errors) as subscribing:
        async with sub:
            pass

    for error in (connecting.value, publishing.value, subscribing.value):
        # One error of ours, naming the address, chained to redis-py's.
        assert f"rediss://127.0.0.1:{tls_server.port}/0" in str(error)
        assert isinstance(error.__cause__, redis.RedisError | OSError)

    assert topic in str(publishing.value)
    assert pub.get_stats()["publish_failures"] == 1
    assert not sub.running


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cert_reqs_none_works_without_a_ca_when_client_certs_are_optional(
    tls_optional_server: TLSRedisServer, uid: str, transport: str
) -> None:
    topic = f"tls-none-{transport}-{uid}"
    received = await round_trip(
        tls_optional_server.url, topic, transport, ssl_cert_reqs="none"
    )

    assert received == list(range(EVENTS))


@pytest.mark.fault
async def test_verification_stays_on_by_default_and_rejects_an_unknown_ca(
    tls_optional_server: TLSRedisServer,
) -> None:
    # The same server and no CA, but ssl_cert_reqs left at "required": the
    # test CA is not trusted, so the handshake must fail, and a certificate
    # that is not trusted now will not be on a retry: no retry.
    pub = EventPublisher(tls_optional_server.url, publish_retry_timeout=30)
    with pytest.raises(ConfigurationError) as connecting:
        await pub.connect()

    with pytest.raises(ConfigurationError) as publishing:
        await pub.publish("tls-untrusted", {"n": 1})

    await pub.close()
    assert isinstance(connecting.value.__cause__, redis.ConnectionError)
    for error in (connecting.value, publishing.value):
        assert "did not pass verification (self-signed certificate in" in str(error)
        assert "set ssl_ca_certs to the CA that signed it" in str(error)
    assert "topic 'tls-untrusted'" in str(publishing.value)
    assert pub.get_stats()["publish_retries"] == 0
    assert pub.get_stats()["publish_failures"] == 1
    for transport in TRANSPORTS:
        sub = EventSubscriber(tls_optional_server.url, transport=transport)

        @sub.on("tls-untrusted")
        async def never(topic: str, event: object) -> None:
            raise AssertionError("no event can arrive without a connection")

        with pytest.raises(ConfigurationError, match="did not pass verification"):
            async with sub:
                pass
