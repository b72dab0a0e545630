"""`prismn admin ...`: credentials and peers of a running coordinator, with the admin key.

The admin key comes from --admin-key-file or PRISMN_ADMIN_KEY, never from the command line.
"""

from __future__ import annotations

import json

import httpx
import typer

from prismn.cli.server_cmds import read_secret
from prismn.errors import PrismnError

COORD = typer.Option("http://127.0.0.1:8000", "--coordinator", help="Coordinator URL.")
KEYFILE = typer.Option(None, "--admin-key-file", help="File holding the admin key (or set PRISMN_ADMIN_KEY).")


def _call(url: str, key_file: str | None, method: str, path: str, body: dict | None = None) -> dict:
    key = read_secret("PRISMN_ADMIN_KEY", key_file, "admin key")
    try:
        r = httpx.request(method, url.rstrip("/") + path, json=body, timeout=30,
                          headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as e:
        raise PrismnError(f"cannot reach the coordinator at {url}: {e}") from None
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except Exception:
            msg = r.text[:200]
        raise PrismnError(f"{method} {path} refused ({r.status_code}): {msg}")
    return r.json()


def register(app: typer.Typer) -> None:
    admin = typer.Typer(help="Manage a running coordinator's join tokens, API keys and peers (admin key).",
                        no_args_is_help=True)
    app.add_typer(admin, name="admin")

    for kind, path, noun in (("join-token", "/v1/admin/join-tokens", "join token"),
                             ("api-key", "/v1/admin/api-keys", "API key")):
        group = typer.Typer(help=f"{noun}s: create (shown once) and list; revoke with `prismn admin revoke ID`.", no_args_is_help=True)
        admin.add_typer(group, name=kind)

        def commands(group: typer.Typer = group, path: str = path, noun: str = noun) -> None:
            @group.command("create")
            def create(coordinator: str = COORD, admin_key_file: str = KEYFILE,
                       label: str = typer.Option(None, "--label", help="What it is for."),
                       ttl_s: float = typer.Option(None, "--ttl-s", min=1, help="Expire after this many seconds."),
                       out: str = typer.Option(None, "--out", help="Write the secret to this file (0600) "
                                                               "instead of printing it.")) -> None:
                """Make a new one; the secret is shown (or written) once and stored only hashed."""
                got = _call(coordinator, admin_key_file, "POST", path, {"label": label, "ttl_s": ttl_s})
                if out:
                    from pathlib import Path

                    from prismn.identity import write_private

                    write_private(Path(out), got["secret"] + "\n")
                    print(f"{noun} {got['id']} written to {out} (expires: {got['expires'] or 'never'})")
                else:
                    print(got["secret"])

            @group.command("list")
            def listing(coordinator: str = COORD, admin_key_file: str = KEYFILE) -> None:
                """Their ids, labels, expiry and revocation (never the secrets)."""
                print(json.dumps(_call(coordinator, admin_key_file, "GET", path)["data"], indent=2))

        commands()

    @admin.command("revoke")
    def revoke(cred_id: str = typer.Argument(..., help="The id `list` shows."), coordinator: str = COORD,
               admin_key_file: str = KEYFILE) -> None:
        """Revoke a join token or API key now."""
        got = _call(coordinator, admin_key_file, "DELETE", f"/v1/admin/credentials/{cred_id}")
        print(f"{got['id']} revoked at {got['revoked']}")

    @admin.command("remove-peer")
    def remove_peer(peer_id: str = typer.Argument(...), coordinator: str = COORD, admin_key_file: str = KEYFILE) -> None:
        """Forget a peer (its id may then join with another key)."""
        _call(coordinator, admin_key_file, "DELETE", f"/v1/peers/{peer_id}")
        print(f"peer {peer_id} removed")
