"""felixctl: the operator's command line, in the manner of calicoctl.

This module holds the top-level group (global options: datastore, TLS, key prefix, output
format), turns every known error into one line on stderr with exit status 1, and registers
the command groups, one module each.
"""

from __future__ import annotations

import platform

import click

import felix_py
from felix_py import config as config_mod
from felix_py import model
from felix_py.ctl import (bgp, config_cmd, datastore, diags, endpoint, group, ipam_cmd,
                          pool, profile, resources, status)
from felix_py.ctl import lab_cmd
from felix_py.ctl.common import CtlError, Ctx
from felix_py.ctl.output import FORMATS, emit, fields, output_option
from felix_py.datastore.client import DatastoreError, TlsFiles
from felix_py.datastore.embedded import EmbeddedEtcdError
from felix_py.datastore.keys import DEFAULT_PREFIX, KeyLayoutError
from felix_py.datastore.registration import NotFound

# Errors that are the operator's to fix; anything else is a bug and keeps its traceback.
_TOLD_ERRORS = (DatastoreError, model.ModelError, NotFound, config_mod.ConfigError,
                KeyLayoutError, EmbeddedEtcdError)


def _one_line(err: click.UsageError) -> click.UsageError:
    """A usage error as one line with a pointer to the help, instead of click's usage block."""
    if err.ctx is None:
        return err
    out = click.UsageError(f"{err.format_message()} (see `{err.ctx.command_path} --help`)")
    out.exit_code = err.exit_code
    return out


class FelixGroup(click.Group):
    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None
        except _TOLD_ERRORS as e:
            raise CtlError(str(e)) from None


@click.group(cls=FelixGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--etcd-endpoints", envvar="FELIX_ETCD_ENDPOINTS", metavar="URL[,URL...]",
              help="etcd client URLs [FELIX_ETCD_ENDPOINTS]; default: the local embedded "
                   "etcd (`felixctl datastore start`).")
@click.option("--etcd-ca-file", envvar="FELIX_ETCD_CA_FILE", default="", metavar="PATH",
              help="CA certificate that signed etcd's certificate [FELIX_ETCD_CA_FILE].")
@click.option("--etcd-cert-file", envvar="FELIX_ETCD_CERT_FILE", default="", metavar="PATH",
              help="Client certificate for etcd [FELIX_ETCD_CERT_FILE].")
@click.option("--etcd-key-file", envvar="FELIX_ETCD_KEY_FILE", default="", metavar="PATH",
              help="Client private key for etcd [FELIX_ETCD_KEY_FILE].")
@click.option("--etcd-prefix", envvar="FELIX_ETCD_PREFIX", default=DEFAULT_PREFIX,
              show_default=True, help="Root of every key [FELIX_ETCD_PREFIX].")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="table",
              show_default=True, help="Output format of every command that prints data.")
@click.version_option(felix_py.__version__, "--version", prog_name="felixctl")
@click.pass_context
def cli(ctx: click.Context, etcd_endpoints, etcd_ca_file, etcd_cert_file, etcd_key_file,
        etcd_prefix, output):
    """felixctl: run a felix-py network (workloads, policy, pools, BGP, agents)."""
    ctx.obj = Ctx(etcd_endpoints or None,
                  TlsFiles(etcd_ca_file, etcd_cert_file, etcd_key_file),
                  etcd_prefix, output)


@cli.command()
@output_option
def version():
    """Print felixctl's version."""
    data = {"felixctl": felix_py.__version__, "python": platform.python_version()}
    emit(data, text=fields(data.items()))


for _command in (status.status, status.node, endpoint.endpoint, profile.profile,
                 group.group, group.connect, group.disconnect, pool.pool, bgp.bgp, config_cmd.config, resources.apply, resources.create,
                 resources.delete, resources.get, diags.diags, datastore.datastore,
                 ipam_cmd.ipam, lab_cmd.lab):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="felixctl")


if __name__ == "__main__":
    main()
