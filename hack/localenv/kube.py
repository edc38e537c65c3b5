"""A Kubernetes control plane without nodes: etcd, kube-apiserver and
kube-controller-manager as loopback processes, with a real PKI.

Why not envtest-style "apiserver only": the operator creates Jobs and relies
on the ServiceAccount it ships, so the tests need the Job controller (Jobs
create Pods), the serviceaccount controllers (a namespace gets its ``default``
ServiceAccount and ``kube-root-ca.crt``), the garbage collector, and RBAC that
is actually enforced. So the apiserver runs with ``Node,RBAC`` authorization,
client-certificate and ServiceAccount-token authentication, and etcd is
reached over mutual TLS; nothing listens beyond 127.0.0.1 and nothing is
insecure. :meth:`KubeInfo.mint_sa_kubeconfig` turns any ServiceAccount into a
kubeconfig (TokenRequest API) so code can be tested with exactly its RBAC.

There is no scheduler and no kubelet: Pods created by Jobs stay Pending and
unbound; a test harness that needs them to run plays the node itself.

Every start raises :class:`StartError` naming the component, its command and
its log, and :meth:`KubeCluster.start` stops what it had started first.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import ipaddress
import json
import os
import shutil
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localenv import binaries
from localenv.process import ManagedProcess, StartError, free_port

LOOPBACK = "127.0.0.1"
# /24 keeps the ClusterIP allocator's bitmap tiny; the demo needs few Services.
SERVICE_CIDR = "10.0.0.0/24"
# The apiserver gives the `kubernetes` Service the first address of the range,
# and in-cluster clients verify the serving certificate against it.
KUBERNETES_SERVICE_IP = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
CLUSTER_DOMAIN = "cluster.local"
# Issuer (and so default audience) of ServiceAccount tokens, as on real clusters.
SERVICE_ACCOUNT_ISSUER = f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}"
# Names in the apiserver serving certificate: loopback for us, the in-cluster
# names for pods that a node harness may run later.
APISERVER_SANS = (
    LOOPBACK,
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
    KUBERNETES_SERVICE_IP,
)
# The CN kube-apiserver presents when proxying; the only name it trusts there.
FRONT_PROXY_CLIENT = "front-proxy-client"
# Certificates outlive any demo session; the PKI is regenerated on every start.
CERT_VALIDITY = datetime.timedelta(days=365)
# Backdate notBefore so a slightly skewed clock never sees a "future" cert.
CLOCK_SKEW = datetime.timedelta(hours=1)
# Lifetime of minted ServiceAccount tokens: a working day of demo. The
# apiserver enforces a minimum of 600 seconds.
DEFAULT_TOKEN_SECONDS = 24 * 3600
# Seconds for one admin REST call or readiness probe.
REQUEST_TIMEOUT = 10.0


# --- PKI ------------------------------------------------------------------------


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PKCS#8 private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    """The cluster's certificates under ``directory``; :meth:`generate` writes them.

    One CA signs etcd's, the apiserver's and all client certificates (kubeadm
    uses a separate etcd CA; nothing here needs that), plus a front-proxy CA
    for request-header authentication, which must be separate. Keys are ECDSA
    P-256, which every component accepts and which generates in microseconds.
    """

    directory: Path
    # Extra addresses in the apiserver serving certificate (a node's address,
    # when pods must reach the apiserver through the `kubernetes` Service).
    extra_sans: tuple[str, ...] = ()

    def _pair(self, name: str) -> CertPair:
        return CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")

    @property
    def ca(self) -> CertPair:
        return self._pair("ca")

    @property
    def etcd_server(self) -> CertPair:
        """etcd's serving and peer certificate."""
        return self._pair("etcd-server")

    @property
    def etcd_client(self) -> CertPair:
        """What kube-apiserver (and our readiness probe) present to etcd."""
        return self._pair("apiserver-etcd-client")

    @property
    def apiserver(self) -> CertPair:
        return self._pair("apiserver")

    @property
    def admin(self) -> CertPair:
        """Cluster admin: group system:masters bypasses RBAC."""
        return self._pair("admin")

    @property
    def controller_manager(self) -> CertPair:
        """kube-controller-manager's client identity, bound by bootstrap RBAC."""
        return self._pair("controller-manager")

    @property
    def controller_manager_serving(self) -> CertPair:
        return self._pair("controller-manager-serving")

    @property
    def front_proxy_ca(self) -> CertPair:
        """Separate CA for request-header authentication (aggregated APIs).

        A client cert from it (with an allowed name) may assert any identity,
        so it must not be the main CA, whose client certs are handed out.
        """
        return self._pair("front-proxy-ca")

    @property
    def front_proxy_client(self) -> CertPair:
        """kube-apiserver's identity when proxying to aggregated API servers."""
        return self._pair("front-proxy-client")

    @property
    def apiserver_kubelet_client(self) -> CertPair:
        """What kube-apiserver presents to kubelets (logs, exec, port-forward)."""
        return self._pair("apiserver-kubelet-client")

    @property
    def service_account_key(self) -> Path:
        """Signs ServiceAccount tokens (apiserver and kube-controller-manager)."""
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        """Verifies ServiceAccount tokens (apiserver)."""
        return self.directory / "sa.pub"

    def generate(self) -> PKI:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = _Issuer.new_ca("localenv-ca", self.ca)
        loopback = (LOOPBACK, "localhost")
        ca.issue(self.etcd_server, "etcd", sans=loopback, server=True, client=True)
        ca.issue(self.etcd_client, "kube-apiserver-etcd-client", client=True)
        ca.issue(
            self.apiserver,
            "kube-apiserver",
            sans=(*APISERVER_SANS, *self.extra_sans),
            server=True,
        )
        ca.issue(
            self.apiserver_kubelet_client,
            "kube-apiserver-kubelet-client",
            org="system:masters",
            client=True,
        )
        ca.issue(self.admin, "localenv-admin", org="system:masters", client=True)
        ca.issue(self.controller_manager, "system:kube-controller-manager", client=True)
        ca.issue(
            self.controller_manager_serving, "kube-controller-manager", sans=loopback, server=True
        )
        proxy = _Issuer.new_ca("localenv-front-proxy-ca", self.front_proxy_ca)
        proxy.issue(self.front_proxy_client, FRONT_PROXY_CLIENT, client=True)
        sa_key = ec.generate_private_key(ec.SECP256R1())
        _write_private(self.service_account_key, sa_key)
        self.service_account_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return self

    def issue(
        self,
        name: str,
        cn: str,
        *,
        org: str | None = None,
        sans: Iterable[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> CertPair:
        """Issue one more certificate from the (already generated) cluster CA."""
        pair = self._pair(name)
        _Issuer.load(self.ca).issue(pair, cn, org=org, sans=sans, server=server, client=client)
        return pair

    def client_context(self, pair: CertPair) -> ssl.SSLContext:
        """TLS context trusting our CA and presenting ``pair``."""
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        context.load_cert_chain(str(pair.cert), str(pair.key))
        return context


@dataclass(frozen=True)
class _Issuer:
    """A CA key and name, in memory while the PKI is generated."""

    key: ec.EllipticCurvePrivateKey
    name: x509.Name
    now: datetime.datetime

    @classmethod
    def load(cls, pair: CertPair) -> _Issuer:
        """The CA written by :meth:`new_ca`, read back to issue more certificates."""
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{pair.key}: not an EC private key")
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        return cls(key, cert.subject, datetime.datetime.now(datetime.UTC))

    @classmethod
    def new_ca(cls, cn: str, pair: CertPair) -> _Issuer:
        key = ec.generate_private_key(ec.SECP256R1())
        ca = cls(key, _x509_name(cn), datetime.datetime.now(datetime.UTC))
        cert = (
            ca._builder(ca.name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_pair(pair, cert, key)
        return ca

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - CLOCK_SKEW)
            .not_valid_after(self.now + CERT_VALIDITY)
        )

    def issue(
        self,
        pair: CertPair,
        cn: str,
        *,
        org: str | None = None,
        sans: Iterable[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            self._builder(_x509_name(cn, org), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        names = list(sans)
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
        _write_pair(pair, builder.sign(self.key, hashes.SHA256()), key)


def _x509_name(cn: str, org: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attributes)


def _key_usage(*, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_secret(path, pem)


def _write_secret(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, from the first byte on."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_pair(pair: CertPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    _write_private(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# --- kubeconfig and REST ----------------------------------------------------------


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_cert: Path,
    user_name: str,
    user: Mapping[str, str],
    namespace: str | None = None,
) -> Path:
    """A self-contained kubeconfig (certificates and token embedded), mode 0600."""
    context: dict[str, str] = {"cluster": "localenv", "user": user_name}
    if namespace is not None:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "localenv",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(ca_cert.read_bytes()),
                },
            }
        ],
        "users": [{"name": user_name, "user": dict(user)}],
        "contexts": [{"name": f"{user_name}@localenv", "context": context}],
        "current-context": f"{user_name}@localenv",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_secret(path, yaml.safe_dump(config, sort_keys=False).encode())
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _cert_user(pair: CertPair) -> dict[str, str]:
    return {
        "client-certificate-data": _b64(pair.cert.read_bytes()),
        "client-key-data": _b64(pair.key.read_bytes()),
    }


class KubeAPIError(RuntimeError):
    """A non-2xx answer from kube-apiserver; ``status`` is the HTTP code."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


def _https_get(url: str, context: ssl.SSLContext) -> str:
    with urllib.request.urlopen(url, context=context, timeout=REQUEST_TIMEOUT) as response:  # noqa: S310
        body: bytes = response.read()
        return body.decode()


@dataclass(frozen=True)
class KubeInfo:
    """How to reach a running control plane (JSON-serializable via ``to_dict``)."""

    server: str
    kubeconfig: Path  # admin (system:masters) kubeconfig
    ca_path: Path
    admin_cert: Path
    admin_key: Path
    kubectl: Path
    version: str
    log_dir: Path

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def admin_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        return context

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One REST call as cluster admin; JSON in and out. Raises :class:`KubeAPIError`."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - our own https:// server URL
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                req, context=self.admin_context(), timeout=REQUEST_TIMEOUT
            ) as response:
                result: dict[str, Any] = json.loads(response.read() or b"{}")
                return result
        except urllib.error.HTTPError as exc:
            raise KubeAPIError(method, path, exc.code, exc.read().decode(errors="replace")) from exc

    def mint_sa_kubeconfig(
        self,
        namespace: str,
        name: str,
        path: Path,
        *,
        expiration_seconds: int = DEFAULT_TOKEN_SECONDS,
    ) -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount ``namespace/name``.

        The token comes from the TokenRequest API (a bound, expiring token, as a
        projected volume would get), so the kubeconfig has exactly that
        ServiceAccount's RBAC. The ServiceAccount must exist.
        """
        answer = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        token = answer["status"]["token"]
        return write_kubeconfig(
            path,
            server=self.server,
            ca_cert=self.ca_path,
            user_name=f"system:serviceaccount:{namespace}:{name}",
            user={"token": token},
            namespace=namespace,
        )

    def to_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> KubeInfo:
        return cls(
            server=data["server"],
            kubeconfig=Path(data["kubeconfig"]),
            ca_path=Path(data["ca_path"]),
            admin_cert=Path(data["admin_cert"]),
            admin_key=Path(data["admin_key"]),
            kubectl=Path(data["kubectl"]),
            version=data["version"],
            log_dir=Path(data["log_dir"]),
        )


# --- components -------------------------------------------------------------------


def _port_taken(port: int, address: str = LOOPBACK) -> bool:
    """Would a server fail to listen on ``address``:``port``?

    SO_REUSEADDR like Go's listeners, so connections in TIME_WAIT from an
    earlier server on that port do not count as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            # The address itself is gone (a node's bridge, removed): nothing listens.
            return exc.errno != errno.EADDRNOTAVAIL
        return False


def _check_ports(
    process: ManagedProcess, ports: Mapping[str, int], address: str = LOOPBACK
) -> None:
    """Fail before starting if a port is taken, rather than probing a foreign server."""
    for what, port in ports.items():
        if _port_taken(port, address):
            raise StartError(
                f"{process.describe()}: {what} port {address}:{port} is already in use"
            )


def _executable(name: str, override: Path | None, build: bool) -> Path:
    path = override if override is not None else binaries.binary(name, build=build)
    if not path.is_file():
        raise StartError(f"{name}: binary {path} not found; build it with {binaries.BUILD_SCRIPT}")
    return path


def _base_env(home: Path) -> dict[str, str]:
    # A clean environment: no KUBECONFIG, proxies or ETCD_* from the caller leak in.
    return {"PATH": "/usr/bin:/bin", "HOME": str(home)}


@dataclass
class Etcd:
    """A single-member etcd on loopback, mutual TLS when ``pki`` is given."""

    base_dir: Path
    log_dir: Path
    pki: PKI | None = None
    die_with_parent: bool = True
    build: bool = True
    executable: Path | None = None
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "etcd-data"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "etcd.log"

    @property
    def scheme(self) -> str:
        return "http" if self.pki is None else "https"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.client_port}"

    def start(self) -> str:
        """Start and wait for ``/health``; returns the client URL."""
        exe = _executable("etcd", self.executable, self.build)
        peer_url = f"{self.scheme}://{LOOPBACK}:{self.peer_port}"
        argv = [
            str(exe),
            "--name=localenv",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=localenv={peer_url}",
            # Test and demo data are disposable; fsync dominates etcd latency.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        if self.pki is not None:
            server = self.pki.etcd_server
            for prefix in ("", "peer-"):
                argv += [
                    f"--{prefix}cert-file={server.cert}",
                    f"--{prefix}key-file={server.key}",
                    f"--{prefix}trusted-ca-file={self.pki.ca.cert}",
                    f"--{prefix}client-cert-auth",
                ]
        self.process = ManagedProcess(
            "etcd",
            argv,
            self.log_path,
            env=_base_env(self.base_dir),
            die_with_parent=self.die_with_parent,
        )
        _check_ports(self.process, {"client": self.client_port, "peer": self.peer_port})
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        context = None if self.pki is None else self.pki.client_context(self.pki.etcd_client)

        def healthy() -> bool:
            with urllib.request.urlopen(  # noqa: S310 - http(s) to our own etcd
                f"{self.client_url}/health", context=context, timeout=REQUEST_TIMEOUT
            ) as response:
                return bool(json.loads(response.read()).get("health") == "true")

        self.process.wait_ready(healthy)
        return self.client_url

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class KubeAPIServer:
    """kube-apiserver on a free loopback port; writes the admin kubeconfig."""

    base_dir: Path
    log_dir: Path
    pki: PKI
    etcd_url: str
    die_with_parent: bool = True
    build: bool = True
    executable: Path | None = None
    port: int = field(default_factory=free_port)
    # Where it listens and what it advertises in the `kubernetes` Service:
    # loopback without nodes; the node's address when pods must reach it.
    address: str = LOOPBACK
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.base_dir / "admin.kubeconfig"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "kube-apiserver.log"

    def start(self) -> str:
        """Start and wait for ``/readyz``; returns the server URL."""
        exe = _executable("kube-apiserver", self.executable, self.build)
        pki = self.pki
        argv = [
            str(exe),
            f"--bind-address={self.address}",
            # It advertises this address in the `kubernetes` Service; without
            # the flag it would pick (and need) a non-loopback interface.
            f"--advertise-address={self.address}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.base_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            # Request-header authentication (the aggregation layer), as on
            # kubeadm clusters; kube-controller-manager's delegated authn
            # expects it and logs errors without it.
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            # Every request must authenticate (our probes use the admin cert).
            "--anonymous-auth=false",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--etcd-servers={self.etcd_url}",
            f"--etcd-cafile={pki.ca.cert}",
            f"--etcd-certfile={pki.etcd_client.cert}",
            f"--etcd-keyfile={pki.etcd_client.key}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # kubectl logs/exec reach kubelets with this identity, and verify
            # their serving certificates (issued by our CA).
            f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
        ]
        if self.address == LOOPBACK:
            # Endpoints may not hold loopback IPs (validation rejects them), so
            # the default reconciler would log an error for 127.0.0.1 forever.
            # Without nodes there is no Service routing to maintain anyway.
            argv.append("--endpoint-reconciler-type=none")
        self.process = ManagedProcess(
            "kube-apiserver",
            argv,
            self.log_path,
            env=_base_env(self.base_dir),
            die_with_parent=self.die_with_parent,
        )
        _check_ports(self.process, {"secure": self.port}, self.address)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        write_kubeconfig(
            self.admin_kubeconfig,
            server=self.server,
            ca_cert=pki.ca.cert,
            user_name="localenv-admin",
            user=_cert_user(pki.admin),
        )
        self.process.start()
        context = pki.client_context(pki.admin)
        self.process.wait_ready(lambda: _https_get(f"{self.server}/readyz", context) == "ok")
        return self.server

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class KubeControllerManager:
    """kube-controller-manager with all default controllers and its own identity."""

    base_dir: Path
    log_dir: Path
    pki: PKI
    server: str
    die_with_parent: bool = True
    build: bool = True
    executable: Path | None = None
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def kubeconfig(self) -> Path:
        return self.base_dir / "controller-manager.kubeconfig"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "kube-controller-manager.log"

    def start(self) -> None:
        """Start and wait for its ``/healthz``."""
        exe = _executable("kube-controller-manager", self.executable, self.build)
        pki = self.pki
        argv = [
            str(exe),
            f"--kubeconfig={self.kubeconfig}",
            # Delegated authn/authz of its own endpoints, as on kubeadm clusters.
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.base_dir / 'controller-manager-certs'}",
            f"--tls-cert-file={pki.controller_manager_serving.cert}",
            f"--tls-private-key-file={pki.controller_manager_serving.key}",
            # Default-on controllers: job, garbagecollector, namespace,
            # serviceaccount(-token), root-ca-cert-publisher, csrsigning, ...
            "--controllers=*",
            # Each controller acts as its own ServiceAccount, so RBAC denials
            # show up here as they would on a real cluster.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca.cert}",
            # Lets a later node harness get kubelet certificates via CSRs.
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            # Its default is under /usr/libexec; keep everything in base_dir.
            f"--flex-volume-plugin-dir={self.base_dir / 'flexvolume'}",
            # A single instance: skip the lease dance (and its startup delay).
            "--leader-elect=false",
            "--profiling=false",
        ]
        self.process = ManagedProcess(
            "kube-controller-manager",
            argv,
            self.log_path,
            env=_base_env(self.base_dir),
            die_with_parent=self.die_with_parent,
        )
        _check_ports(self.process, {"secure": self.port})
        write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca_cert=pki.ca.cert,
            user_name="system:kube-controller-manager",
            user=_cert_user(pki.controller_manager),
        )
        self.process.start()
        # Its serving cert is ours, so the probe verifies TLS; /healthz is
        # always allowed, no client identity needed.
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        url = f"https://{LOOPBACK}:{self.port}/healthz"
        self.process.wait_ready(lambda: _https_get(url, context) == "ok")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager under ``base_dir``.

    ``base_dir`` holds the PKI, kubeconfigs and etcd data and is removed by
    :meth:`stop`; logs go to ``log_dir`` and stay. ``executables`` overrides
    binary paths by name (tests of a missing binary use it).
    """

    base_dir: Path
    log_dir: Path
    die_with_parent: bool = True
    build: bool = True
    executables: Mapping[str, Path] = field(default_factory=dict)
    etcd_client_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    controller_manager_port: int = field(default_factory=free_port)
    # kube-apiserver's listen/advertise address (see KubeAPIServer.address).
    apiserver_address: str = LOOPBACK
    etcd: Etcd | None = field(default=None, init=False)
    apiserver: KubeAPIServer | None = field(default=None, init=False)
    controller_manager: KubeControllerManager | None = field(default=None, init=False)
    _info: KubeInfo | None = field(default=None, init=False)

    @property
    def pki(self) -> PKI:
        extra = () if self.apiserver_address == LOOPBACK else (self.apiserver_address,)
        return PKI(self.base_dir / "pki", extra)

    @property
    def info(self) -> KubeInfo:
        if self._info is None:
            raise RuntimeError("KubeCluster is not started")
        return self._info

    def processes(self) -> list[ManagedProcess]:
        """Started processes, in start order."""
        parts = (self.etcd, self.apiserver, self.controller_manager)
        return [p.process for p in parts if p is not None and p.process is not None]

    def start(self) -> KubeInfo:
        # Resolve every binary first: a missing one fails before anything runs.
        exe = {
            name: _executable(name, self.executables.get(name), self.build)
            for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
        }
        self.base_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            pki = self.pki.generate()
            self.etcd = Etcd(
                self.base_dir,
                self.log_dir,
                pki,
                self.die_with_parent,
                self.build,
                exe["etcd"],
                self.etcd_client_port,
                self.etcd_peer_port,
            )
            etcd_url = self.etcd.start()
            self.apiserver = KubeAPIServer(
                self.base_dir,
                self.log_dir,
                pki,
                etcd_url,
                self.die_with_parent,
                self.build,
                exe["kube-apiserver"],
                self.apiserver_port,
                self.apiserver_address,
            )
            server = self.apiserver.start()
            info = KubeInfo(
                server=server,
                kubeconfig=self.apiserver.admin_kubeconfig,
                ca_path=pki.ca.cert,
                admin_cert=pki.admin.cert,
                admin_key=pki.admin.key,
                kubectl=exe["kubectl"],
                version=binaries.versions()["KUBERNETES_VERSION"],
                log_dir=self.log_dir,
            )
            self.controller_manager = KubeControllerManager(
                self.base_dir,
                self.log_dir,
                pki,
                server,
                self.die_with_parent,
                self.build,
                exe["kube-controller-manager"],
                self.controller_manager_port,
            )
            self.controller_manager.start()
            # Ready means usable: the serviceaccount controller has given the
            # default namespace its ServiceAccount, so Pods can be admitted.
            assert self.controller_manager.process is not None
            self.controller_manager.process.wait_ready(
                _exists(info, "/api/v1/namespaces/default/serviceaccounts/default")
            )
        except BaseException:
            self.stop()
            raise
        self._info = info
        return info

    def stop(self) -> None:
        """Stop in reverse order and remove ``base_dir``; safe to call twice."""
        for part in (self.controller_manager, self.apiserver, self.etcd):
            if part is not None:
                part.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What :meth:`stop` failed to clean up (processes, ports, files); ideally []."""
        found = [
            f"{p.name} (pid {p.pid}) still running"
            for p in self.processes()
            if p.proc is not None and p.proc.poll() is None
        ]
        ports = {
            "etcd client": (self.etcd_client_port, LOOPBACK),
            "etcd peer": (self.etcd_peer_port, LOOPBACK),
            "kube-apiserver": (self.apiserver_port, self.apiserver_address),
            "kube-controller-manager": (self.controller_manager_port, LOOPBACK),
        }
        found += [
            f"{what} port {port} still bound"
            for what, (port, address) in ports.items()
            if _port_taken(port, address)
        ]
        if self.base_dir.exists():
            found.append(f"{self.base_dir} still exists")
        return found


def _exists(info: KubeInfo, path: str) -> Callable[[], bool]:
    def probe() -> bool:
        with contextlib.suppress(KubeAPIError):
            info.request("GET", path)
            return True
        return False

    return probe
