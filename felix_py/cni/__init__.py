"""felix-cni: the CNI plugin that plugs containers into a felix-py network.

``main()`` is the executable a container runtime runs: the command and container come in
``CNI_*`` variables, the network configuration on stdin; the result (or the spec's error
JSON) goes to stdout, logs to stderr (and ``log_file``).  ``contrib/cni/README.md`` shows
how to install it for containerd, CRI-O and podman.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from typing import Mapping, TextIO

from felix_py.cni import spec
from felix_py.cni.link import LinkError, NoNetns
from felix_py.cni.plugin import Plugin
from felix_py.cni.spec import CniError
from felix_py.datastore.client import Conflict, DatastoreError, DatastoreUnavailable
from felix_py.model import ModelError

log = logging.getLogger("felix_py.cni")


def _logging(conf: spec.NetConf | None) -> None:
    level = getattr(logging, (conf.log_level if conf else "warning").upper())
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if conf and conf.log_file:
        try:
            handlers.append(logging.FileHandler(conf.log_file))
        except OSError as e:
            print(f"felix-cni: cannot open log_file {conf.log_file}: {e}", file=sys.stderr)
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s felix-cni[%(process)d] %(levelname)s %(message)s")
    # pyroute2's debug output is every netlink message: not what log_level debug is for.
    logging.getLogger("pyroute2").setLevel(max(level, logging.WARNING))


def run(environ: Mapping[str, str], stdin: bytes, stdout: TextIO) -> int:
    """One invocation; returns the exit status."""
    version = spec.DEFAULT_VERSION
    plugin = None
    try:
        env = spec.parse_env(environ)
        if env.command == "VERSION":
            version = spec.read_version(stdin)
            json.dump({"cniVersion": version,
                       "supportedVersions": list(spec.SUPPORTED_VERSIONS)}, stdout)
            return 0
        conf = spec.parse_netconf(stdin)
        version = conf.cniVersion
        _logging(conf)
        since = spec.COMMAND_SINCE.get(env.command)
        if since and not spec.version_at_least(version, since):
            raise CniError(spec.INCOMPATIBLE_VERSION,
                           f"{env.command} needs cniVersion {since} or later; the "
                           f"configuration says {version}")
        plugin = Plugin(env, conf)
        if env.command == "ADD":
            json.dump(plugin.add(), stdout)
        elif env.command == "DEL":
            plugin.delete()
        elif env.command == "CHECK":
            plugin.check()
        elif env.command == "STATUS":
            plugin.status()
        elif env.command == "GC":
            plugin.gc()
        return 0
    except CniError as e:
        err = e
    except NoNetns as e:
        err = CniError(spec.UNKNOWN_CONTAINER, str(e))
    except LinkError as e:
        err = CniError(spec.INTERNAL, str(e))
    except (DatastoreUnavailable, Conflict) as e:
        err = CniError(spec.TRY_AGAIN_LATER, str(e))
    except ModelError as e:
        err = CniError(spec.INVALID_CONFIG, f"refused by the data model: {e}")
    except DatastoreError as e:     # a bad endpoint URL, an unreadable TLS file
        err = CniError(spec.INVALID_CONFIG, f"etcd settings: {e}")
    except Exception as e:        # a bug: still answer in the protocol, keep the traceback
        log.exception("felix-cni failed")
        err = CniError(spec.INTERNAL, f"internal error: {type(e).__name__}: {e}")
    finally:
        if plugin is not None:
            plugin.close()
    log.error("%s failed (code %d): %s", environ.get("CNI_COMMAND", "?"), err.code, err.msg)
    json.dump(err.to_json(version), stdout)
    return 1


def main() -> None:
    if not logging.getLogger().handlers:
        _logging(None)
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    out = io.StringIO()
    code = run(os.environ, stdin, out)
    if out.getvalue():      # DEL, CHECK and STATUS answer nothing on success
        sys.stdout.write(out.getvalue() + "\n")
        sys.stdout.flush()
    sys.exit(code)
