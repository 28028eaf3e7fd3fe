"""`vgpuctl pki init|issue`: the pool's CA and the certificates of its users, admins and nodes. No daemon needed.

Everything is written by `vgpu._private.pki`; this module only reads flags and prints the paths written, one
per line, so that scripts can pick them up. Any bad name, role, host or days value, a missing CA, or a file
that would be overwritten without --force is one usage line (exit 2) and nothing written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final

import typer

from vgpu._private import pki
from vgpuctl._private import exit_codes, render
from vgpuctl._private.errors import CliError

_SETTINGS: Final = {"help_option_names": ["-h", "--help"]}

Directory = Annotated[
    Path, typer.Argument(metavar="DIR", help="The PKI directory (created 0700 if missing).", show_default=False)
]
Force = Annotated[bool, typer.Option("--force", help="Replace files that exist already.")]


def build() -> typer.Typer:
    """The `pki` command group, added to vgpuctl's app."""
    app = typer.Typer(name="pki", context_settings=_SETTINGS, invoke_without_command=True, epilog=exit_codes.EPILOG)
    app.callback()(_pki_root)
    app.command("init", epilog=exit_codes.EPILOG)(init)
    app.command("issue", epilog=exit_codes.EPILOG)(issue)
    return app


def _pki_root(ctx: typer.Context) -> None:
    """The pool's certificates: `vgpuctl pki init DIR`, then `vgpuctl pki issue DIR NAME --role ROLE`."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(exit_codes.USAGE)


def init(
    directory: Directory,
    *,
    cluster: Annotated[
        str, typer.Option("--cluster", metavar="NAME", help="The pool (vgpud --cluster) the CA is for.")
    ] = "default",
    days: Annotated[int, typer.Option("--days", metavar="N", help="Validity in days (1..36500).")] = 3650,
    force: Force = False,
) -> None:
    """Make a CA for the pool: DIR/ca.pem (give it to every daemon and client) and DIR/ca-key.pem (0600).

    The CA names its cluster (spiffe://CLUSTER); every certificate issued from it names the same cluster.
    """
    _print_paths(_run(lambda: pki.create_ca(directory, cluster=cluster, days=days, force=force)))


def issue(
    directory: Directory,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Who it is for: user, admin or node name (the CN).")],
    *,
    role: Annotated[
        str, typer.Option("--role", metavar="user|admin|node", help="What the holder may do.", show_default=False)
    ],
    groups: Annotated[
        str, typer.Option("--groups", metavar="A,B", help="Comma-separated groups (subject O=), for projects.")
    ] = "",
    hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            metavar="H",
            help="A DNS name or IP address the holder serves on (repeatable); a node's certificate then "
            "serves as vgpud's server certificate.",
            show_default=False,
        ),
    ] = None,
    days: Annotated[int, typer.Option("--days", metavar="N", help="Validity in days (1..36500).")] = 365,
    force: Force = False,
) -> None:
    """Issue a certificate signed by DIR's CA: DIR/NAME.pem and DIR/NAME-key.pem (0600).

    Its identity is spiffe://CLUSTER/ROLE/NAME. Nodes' certificates serve and connect; users' and admins'
    only connect, unless --host is given.
    """
    group_list = [group.strip() for group in groups.split(",")] if groups.strip() else []
    _print_paths(
        _run(
            lambda: pki.issue(directory, name, role=role, groups=group_list, hosts=hosts or (), days=days, force=force)
        )
    )


def _run(make: Callable[[], tuple[Path, Path]]) -> tuple[Path, Path]:
    """What `make` wrote; its PkiError as one usage line."""
    try:
        return make()
    except pki.PkiError as exc:
        raise CliError(exit_codes.USAGE, str(exc)) from None


def _print_paths(paths: tuple[Path, Path]) -> None:
    for path in paths:
        render.print_line(str(path))
