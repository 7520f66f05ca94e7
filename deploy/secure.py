"""The local stack with authentication and TLS on: what a production deployment turns on.

`StackConfig(secure=True, admin_password=...)` starts:

- Kafka with one SASL_SSL listener (SCRAM-SHA-512), the KRaft StandardAuthorizer and no access
  without an ACL; `admin` (the broker's own user, created when the log dir is formatted) is the
  only super user besides the controller listener's. Other users and their ACLs are created
  through the admin API (`KafkaAdminClient.alter_user_scram_credentials`, `create_acls`).
- Redis listening on TLS only, the default user off, `admin` allowed everything; other users
  come from `ACL SETUSER`.
- Qdrant with `qdrant_api_key` (as without `secure`).

The certificates are a throwaway CA and one server certificate for 127.0.0.1, made with the
openssl command line under `<run dir>/tls`; clients trust `ca.pem`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.stack import StackConfig

ADMIN = "admin"
MECHANISM = "SCRAM-SHA-512"


class SecureStackError(RuntimeError):
    """The secure stack's certificates or settings could not be made."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server certificate
    key: Path  # its private key (PKCS#8, unencrypted: the files are the stack's own)
    keystore: Path  # key then certificate chain: Kafka's PEM keystore

    @classmethod
    def under(cls, folder: Path) -> TlsFiles:
        return cls(
            folder / "ca.pem", folder / "server.crt", folder / "server.key", folder / "server.pem"
        )


def ensure_tls(folder: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 and localhost, made once per stack."""
    files = TlsFiles.under(folder)
    if files.keystore.exists():
        return files
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key, csr = folder / "ca.key", folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", ca_key],
        ["req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=sagestream test CA",
         "-days", "3650", "-out", files.ca],
        ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", files.key],
        ["req", "-new", "-key", files.key, "-subj", "/CN=127.0.0.1", "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "3650", "-extfile", ext, "-out", files.cert],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(
            ["openssl", *map(str, step)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SecureStackError(f"openssl {step[0]} failed: {done.stderr[-1000:]}")
    files.keystore.write_text(files.key.read_text() + files.cert.read_text())
    for path in (ca_key, files.key, files.keystore):
        path.chmod(0o600)
    return files


def kafka_properties(cfg: StackConfig, tls: TlsFiles) -> dict[str, str]:
    """What the secure broker sets over deploy/kafka/server.properties."""
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN}" password="{admin_password(cfg)}";'
    )
    listener = f"SASL_SSL://127.0.0.1:{cfg.kafka_port}"
    return {
        "listeners": f"{listener},CONTROLLER://127.0.0.1:{cfg.controller_port}",
        "advertised.listeners": listener,
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls.keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # the controller listener is loopback PLAINTEXT, its principal ANONYMOUS; clients
        # cannot use it for anything but the controller's own requests
        "super.users": f"User:{ADMIN};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }


def override_properties(path: Path, values: dict[str, str]) -> None:
    """Set `values` in a Java properties file, replacing keys it already has."""
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.partition("=")[0].strip() not in values
    ]
    path.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in values.items())]) + "\n")


def kafka_format_args(cfg: StackConfig) -> list[str]:
    """`kafka-storage format` arguments that create the admin user with the cluster."""
    return ["--add-scram", f"{MECHANISM}=[name={ADMIN},password={admin_password(cfg)}]"]


def redis_conf(cfg: StackConfig, tls: TlsFiles) -> str:
    """Lines appended to deploy/redis/redis.conf: TLS only, ACL users, no default user."""
    return "\n".join(
        [
            "port 0",
            f"tls-port {cfg.redis_port}",
            f"tls-cert-file {tls.cert}",
            f"tls-key-file {tls.key}",
            f"tls-ca-cert-file {tls.ca}",
            "tls-auth-clients no",
            "user default off",
            f"user {ADMIN} on >{admin_password(cfg)} ~* &* +@all",
            "",
        ]
    )


def kafka_admin_kwargs(cfg: StackConfig) -> dict[str, Any]:
    """kafka-python connection options of the admin user."""
    return {
        "bootstrap_servers": cfg.bootstrap_servers,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": MECHANISM,
        "sasl_plain_username": ADMIN,
        "sasl_plain_password": admin_password(cfg),
        "ssl_cafile": str(TlsFiles.under(cfg.tls_dir).ca),
    }


def redis_admin_kwargs(cfg: StackConfig) -> dict[str, Any]:
    """redis-py connection options of the admin user."""
    return {
        "host": "127.0.0.1",
        "port": cfg.redis_port,
        "ssl": True,
        "ssl_ca_certs": str(TlsFiles.under(cfg.tls_dir).ca),
        "username": ADMIN,
        "password": admin_password(cfg),
    }


def admin_password(cfg: StackConfig) -> str:
    if not cfg.admin_password:
        raise SecureStackError("a secure stack needs admin_password")
    return cfg.admin_password
