"""Running felixctl in FV tests: click's runner against the real etcd, under the test's
prefix, with a full dump of the prefix to prove that a refused command wrote nothing."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from felix_py.ctl.main import cli


class Ctl:
    def __init__(self, client, endpoint: str, prefix: str):
        self.client, self.endpoint, self.prefix = client, endpoint, prefix

    def invoke(self, *args: str, input: str | None = None):
        argv = ["--etcd-endpoints", self.endpoint, "--etcd-prefix", self.prefix, *args]
        return CliRunner().invoke(cli, argv, input=input, catch_exceptions=False)

    def __call__(self, *args: str, input: str | None = None) -> str:
        """Run a command that must succeed; its stdout."""
        r = self.invoke(*args, input=input)
        assert r.exit_code == 0, f"felixctl {' '.join(args)} failed ({r.exit_code}): {r.output}"
        return r.stdout

    def json(self, *args: str):
        return json.loads(self("-o", "json", *args))

    def yaml(self, *args: str):
        return yaml.safe_load(self("-o", "yaml", *args))

    def fails(self, *args: str, input: str | None = None) -> str:
        """Run a command that must be refused without writing anything; its error line."""
        before = self.dump()
        r = self.invoke(*args, input=input)
        assert r.exit_code != 0, f"felixctl {' '.join(args)} succeeded: {r.output}"
        assert self.dump() == before, f"felixctl {' '.join(args)} changed the datastore"
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
        return lines[0]

    def dump(self) -> dict[str, str]:
        items, _ = self.client.get_prefix(self.prefix + "/")
        return {k: v.decode() for k, v, _ in items}

    def value(self, key: str):
        """The JSON value under the prefix at ``key`` (relative), or None."""
        raw = self.client.get(f"{self.prefix}/{key}")
        return None if raw is None else json.loads(raw)
