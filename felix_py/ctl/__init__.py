"""felixctl, the operator's command line (``main.cli``)."""

import os

# gRPC's C core logs connection failures (a TLS handshake refused, ...) straight to stderr;
# felixctl reports them itself, as one line.  Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
