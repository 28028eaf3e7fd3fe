"""The `vgpuctl` command: global flags, the verbs put together, and `main()` with exact exit codes.

`vgpuctl [--endpoint EP] [--timeout S] VERB ...`; the verbs live one per module in `verbs/`. `main` runs the
typer app in non-standalone mode so that every failure becomes an exit code from `exit_codes` and one
`vgpuctl: error: ...` line on stderr, never a traceback (VGPUCTL_DEBUG=1 shows one for unexpected bugs).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Final

import typer

import vgpu
from vgpu._private.endpoint import DEFAULT_ENDPOINT, ENV_ENDPOINT
from vgpu._private.tls import ENV_CA, ENV_CERT, ENV_KEY, TlsConfig
from vgpuctl._private import exit_codes
from vgpuctl._private.errors import PREFIX, CliError, one_line
from vgpuctl._private.transport import DEFAULT_TIMEOUT_S, Target
from vgpuctl._private.verbs import (
    audit,
    drain,
    evict,
    gpu_mode,
    gpus,
    health,
    leases,
    mig_plan,
    mig_show,
    nodes,
    pki,
    preempt,
    queue,
    quota_delete,
    quota_get,
    quota_list,
    quota_set,
    report,
    top,
)

PROG: Final = "vgpuctl"
DEBUG_ENV: Final = "VGPUCTL_DEBUG"

_SETTINGS: Final = {"help_option_names": ["-h", "--help"]}


def _check_timeout(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be a number of seconds above 0, got {value:g}")
    return value


Endpoint = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        metavar="EP",
        help=f"The vgpud: unix:///path or HOST:PORT (default: ${ENV_ENDPOINT}, else {DEFAULT_ENDPOINT})",
        show_default=False,
    ),
]
Timeout = Annotated[
    float,
    typer.Option("--timeout", metavar="S", help="Deadline of each call to vgpud, in seconds.", callback=_check_timeout),
]


TlsCert = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert",
        metavar="FILE",
        help=f"Client certificate for a TCP endpoint (default ${ENV_CERT}).",
        show_default=False,
    ),
]
TlsKey = Annotated[
    Path | None,
    typer.Option("--tls-key", metavar="FILE", help=f"Its private key (default ${ENV_KEY}).", show_default=False),
]
TlsCa = Annotated[
    Path | None,
    typer.Option(
        "--tls-ca",
        metavar="FILE",
        help=f"The pool's CA, e.g. ca.pem of vgpuctl pki init (default ${ENV_CA}).",
        show_default=False,
    ),
]


def _print_version(value: bool) -> None:
    """`--version`: print 'vgpuctl X.Y.Z' (the installed vgpu's version) and stop, before any verb runs."""
    if value:
        typer.echo(f"{PROG} {vgpu.__version__}")
        raise typer.Exit(exit_codes.OK)


Version = Annotated[
    bool,
    typer.Option("--version", help="Print vgpuctl's version and exit.", callback=_print_version, is_eager=True),
]


def _tls(cert: Path | None, key: Path | None, ca: Path | None) -> TlsConfig | None:
    """The TLS files given as flags (all three or none); None leaves them to $VGPU_TLS_*."""
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        return None
    if cert is None or key is None or ca is None:
        missing = ", ".join(flag for flag, value in given.items() if value is None)
        raise typer.BadParameter(f"give {missing} too: mutual TLS needs a certificate, its key and the CA")
    return TlsConfig(cert, key, ca)


def _root(  # noqa: PLR0917 -- typer passes the global options positionally
    ctx: typer.Context,
    endpoint: Endpoint = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    version: Version = False,  # noqa: ARG001 -- its eager callback prints and exits
) -> None:
    """Admin CLI of the vgpu GPU pool: nodes, GPUs and leases of the whole pool, from any host."""
    ctx.obj = Target(endpoint=endpoint, timeout=timeout, tls=_tls(tls_cert, tls_key, tls_ca))
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(exit_codes.USAGE)


def _gpu_root(ctx: typer.Context) -> None:
    """Change one GPU: `vgpuctl gpu mode GPU shared|mig|exclusive` (GPU: uuid, uuid prefix or NODE:INDEX)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(exit_codes.USAGE)


def _mig_root(ctx: typer.Context) -> None:
    """MIG instances of the pool: `vgpuctl mig show`, and `vgpuctl mig plan LAYOUT.toml` (a dry run)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(exit_codes.USAGE)


def _quota_root(ctx: typer.Context) -> None:
    """Fair-share quotas of projects: `vgpuctl quota set|get|list|delete`."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(exit_codes.USAGE)


def build() -> typer.Typer:
    """The typer app with every verb registered."""
    app = typer.Typer(
        name=PROG,
        add_completion=False,
        context_settings=_SETTINGS,
        epilog=exit_codes.EPILOG,
        pretty_exceptions_enable=False,
        invoke_without_command=True,
    )
    app.callback()(_root)
    app.command("nodes", epilog=exit_codes.EPILOG)(nodes.nodes)
    app.command("gpus", epilog=exit_codes.EPILOG)(gpus.gpus)
    app.command("leases", epilog=exit_codes.EPILOG)(leases.leases)
    app.command("evict", epilog=exit_codes.EPILOG)(evict.evict)
    app.command("drain", epilog=exit_codes.EPILOG)(drain.drain)
    app.command("health", epilog=exit_codes.EPILOG)(health.health)
    gpu_app = typer.Typer(name="gpu", context_settings=_SETTINGS, invoke_without_command=True, epilog=exit_codes.EPILOG)
    gpu_app.callback()(_gpu_root)
    gpu_app.command("mode", epilog=exit_codes.EPILOG)(gpu_mode.mode)
    app.add_typer(gpu_app)
    mig_app = typer.Typer(name="mig", context_settings=_SETTINGS, invoke_without_command=True, epilog=exit_codes.EPILOG)
    mig_app.callback()(_mig_root)
    mig_app.command("show", epilog=exit_codes.EPILOG)(mig_show.show)
    mig_app.command("plan", epilog=exit_codes.EPILOG)(mig_plan.plan)
    app.add_typer(mig_app)
    quota_app = typer.Typer(
        name="quota", context_settings=_SETTINGS, invoke_without_command=True, epilog=exit_codes.EPILOG
    )
    quota_app.callback()(_quota_root)
    quota_app.command("set", epilog=exit_codes.EPILOG)(quota_set.set_quota)
    quota_app.command("get", epilog=exit_codes.EPILOG)(quota_get.get)
    quota_app.command("list", epilog=exit_codes.EPILOG)(quota_list.list_quotas)
    quota_app.command("delete", epilog=exit_codes.EPILOG)(quota_delete.delete)
    app.add_typer(quota_app)
    app.command("queue", epilog=exit_codes.EPILOG)(queue.queue)
    app.command("preempt", epilog=exit_codes.EPILOG)(preempt.preempt)
    app.command("top", epilog=exit_codes.EPILOG)(top.top)
    app.command("report", epilog=exit_codes.EPILOG)(report.report)
    app.add_typer(pki.build())
    app.command("audit", epilog=exit_codes.EPILOG)(audit.audit)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run vgpuctl with `argv` (default: sys.argv[1:]) and return its exit code; prints, never raises."""
    command = typer.main.get_command(build())
    try:
        result = command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=PROG, standalone_mode=False)
    except CliError as exc:
        return _fail(exc.exit_code, exc.line)
    except typer.TyperException as exc:  # click's usage errors: unknown verb or flag, bad value
        return _fail(getattr(exc, "exit_code", exit_codes.USAGE), _usage_line(exc))
    except typer.Abort:
        return _fail(exit_codes.REFUSED, f"{PREFIX}aborted")
    except BrokenPipeError:  # `vgpuctl leases | head`: the reader left; say nothing more
        _silence_stdout()
        return exit_codes.REFUSED
    except Exception as exc:  # the last guard: a bug must still read as one line, not a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        return _fail(
            exit_codes.REFUSED,
            f"{PREFIX}internal error: {type(exc).__name__}: {one_line(str(exc))} "
            f"(a bug in vgpuctl; rerun with {DEBUG_ENV}=1 for the traceback and report it)",
        )
    return result if isinstance(result, int) else exit_codes.OK


def _usage_line(exc: typer.TyperException) -> str:
    """'vgpuctl: error: <click's message> (see `vgpuctl VERB --help`)'."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else PROG
    message = one_line(exc.format_message()).replace("Value error, ", "")  # typer's coercion wording
    return f"{PREFIX}{message} (see `{path} --help`)"


def _fail(exit_code: int, line: str) -> int:
    sys.stdout.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    return exit_code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests): nothing to redirect
        pass
    finally:
        os.close(devnull)
