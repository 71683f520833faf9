"""CURVE key pairs for the sync sockets: ``python -m sync.keys DIR``.

Writes, all mode 0600 in a 0700 directory::

    DIR/server.key, DIR/server.key_secret     the learner's pair (its sockets are CURVE servers)
    DIR/client.key, DIR/client.key_secret     the actors' pair
    DIR/authorized/client.key                 public keys the learner accepts (add more here)

Point ``sync.keys_dir`` at DIR on both sides (copy it to actor hosts over a trusted channel).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from sync.interfaces import SyncError

SERVER, CLIENT, AUTHORIZED = "server", "client", "authorized"


def make_keys(keys_dir: str | os.PathLike, force: bool = False) -> Path:
    """Create the server and client key pairs in ``keys_dir`` (refuses to overwrite unless ``force``)."""
    import zmq.auth

    d = Path(keys_dir)
    if (d / f"{SERVER}.key_secret").exists() and not force:
        raise SyncError(f"{d} already holds keys (use --force to replace them)")
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    old = os.umask(0o077)
    try:
        for name in (SERVER, CLIENT):
            for suffix in (".key", ".key_secret"):
                (d / f"{name}{suffix}").unlink(missing_ok=True)
            zmq.auth.create_certificates(d, name)
        auth = d / AUTHORIZED
        auth.mkdir(exist_ok=True)
        auth.chmod(0o700)
        shutil.copyfile(d / f"{CLIENT}.key", auth / f"{CLIENT}.key")
    finally:
        os.umask(old)
    for p in [*d.glob("*.key*"), *(d / AUTHORIZED).glob("*.key")]:
        p.chmod(0o600)
    return d


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise SyncError(
            f"CURVE key file {path} is missing: make keys with `python -m sync.keys DIR` and set sync.keys_dir"
        )
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise SyncError(f"cannot read CURVE key file {path}: {e}") from None


def server_keys(keys_dir: str | os.PathLike) -> tuple[bytes, bytes, Path]:
    """(public, secret, authorized-clients dir) for a binding (learner) socket."""
    d = Path(keys_dir)
    pub, sec = _load(d / f"{SERVER}.key_secret", True)
    auth = d / AUTHORIZED
    if not auth.is_dir() or not any(auth.glob("*.key")):
        raise SyncError(f"{auth} holds no client public keys: nobody could connect")
    return pub, sec, auth


def client_keys(keys_dir: str | os.PathLike) -> tuple[bytes, bytes, bytes]:
    """(public, secret, server public) for a connecting (actor) socket."""
    d = Path(keys_dir)
    pub, sec = _load(d / f"{CLIENT}.key_secret", True)
    server_pub, _ = _load(d / f"{SERVER}.key", False)
    return pub, sec, server_pub


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sync.keys", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="directory to write the key files into")
    ap.add_argument("--force", action="store_true", help="replace existing keys")
    args = ap.parse_args(argv)
    try:
        d = make_keys(args.dir, force=args.force)
    except (SyncError, OSError) as e:
        print(f"sync.keys: {e}", file=sys.stderr)
        return 2
    print(f"wrote CURVE keys to {d} (set sync.keys_dir: {d})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
