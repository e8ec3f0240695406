"""The lab: a whole downward-default fabric on one machine, in network namespaces."""
