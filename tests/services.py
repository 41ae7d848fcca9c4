"""Private, throw-away MariaDB and OpenSSH sshd instances for the integration tests.

Each gets its own data dir, port and socket, listens on 127.0.0.1 only, and is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pymysql


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/usr/bin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )


def _wait_for(check, timeout: float, what: str, log: Path | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start in {timeout:.0f}s: {last}\n{tail}")


@dataclass
class MariaDB:
    proc: subprocess.Popen[bytes]
    port: int
    socket_path: str
    base: Path
    user: str = "mcnotify"
    password: str = "db-Pa55word-xyz"
    database: str = "app"
    command: tuple[str, ...] = ()

    def kill_server(self) -> None:
        """Stop the server (what a restart or a crash looks like to a client); `start_server` brings it back."""
        self.proc.terminate()
        self.proc.wait(30)

    def start_server(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: self.admin().close() is None, 60, "mariadbd restart", self.base / "err.log")

    @property
    def url(self) -> str:
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def admin(self) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=self.socket_path, user="root", autocommit=True)

    def connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            autocommit=True,
            charset="utf8mb4",
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.base, ignore_errors=True)


def start_mariadb(*extra: str) -> MariaDB:
    """A private MariaDB on loopback; `extra` server options (TLS, say) are added to its command line."""
    mariadbd, install = find("mariadbd"), find("mariadb-install-db") or find("mysql_install_db")
    if not mariadbd or not install:
        raise FileNotFoundError("mariadbd / mariadb-install-db not installed")
    base = Path(tempfile.mkdtemp(prefix="mcn-db-"))  # short: unix socket paths are limited to ~100 bytes
    datadir, sock, log = base / "data", str(base / "s.sock"), base / "err.log"
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            install,
            "--no-defaults",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *as_root,
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    command = (
        mariadbd,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--socket={sock}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        "--skip-name-resolve",
        f"--log-error={log}",
        f"--pid-file={base}/d.pid",
        "--innodb-buffer-pool-size=64M",
        "--skip-log-bin",
        *as_root,
        *extra,
    )
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = MariaDB(proc, port, sock, base, command=command)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("mariadbd exited")
        db.admin().close()
        return True

    _wait_for(ready, 60, "mariadbd", log)
    with db.admin() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE app CHARACTER SET utf8mb4")
        cur.execute(f"CREATE USER '{db.user}'@'127.0.0.1' IDENTIFIED BY '{db.password}'")
        cur.execute(f"GRANT ALL ON app.* TO '{db.user}'@'127.0.0.1'")
    return db


@dataclass
class Sshd:
    proc: subprocess.Popen[bytes]
    port: int
    base: Path
    root: Path  # the chroot: SFTP's "/" ; its Import/ is MC's import folder
    client_key: Path
    known_hosts: Path
    user: str

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)


def start_sshd() -> Sshd:
    sshd, keygen = find("sshd"), find("ssh-keygen")
    if not sshd or not keygen:
        raise FileNotFoundError("OpenSSH sshd / ssh-keygen not installed")
    if os.geteuid() != 0:
        raise PermissionError("sshd's ChrootDirectory needs root")
    base = Path(tempfile.mkdtemp(prefix="mcn-ssh-"))
    # A chroot's every parent must be root-owned and not group/world-writable: so not under /tmp.
    parent = Path("/var/lib/mcnotify-tests")
    parent.mkdir(mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="root-", dir=parent))
    root.chmod(0o755)
    (root / "Import").mkdir(mode=0o755)
    for name in ("host", "client"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
    (base / "authorized_keys").write_text((base / "client.pub").read_text())
    port = free_port()
    user = os.environ.get("USER") or "root"
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host'}\nPidFile {base / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nForceCommand internal-sftp\n"
        f"ChrootDirectory {root}\nAllowTcpForwarding no\nX11Forwarding no\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = base / "sshd.log"
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    host_pub = (base / "host.pub").read_text().split()
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("sshd exited")
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(4).startswith(b"SSH-")

    _wait_for(ready, 20, "sshd", log)
    return Sshd(proc, port, base, root, base / "client", known_hosts, user)
