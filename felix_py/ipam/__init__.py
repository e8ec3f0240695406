"""IP address management in etcd (Calico's block model) and its garbage collector.

``Ipam(client, layout, hostname)`` allocates and releases; ``gc`` finds and frees
addresses whose owners are gone.  ``docs/ipam.md`` describes the model.
"""

from felix_py.ipam.allocator import Allocation, Ipam, check_handle
from felix_py.ipam.errors import (AddressInUse, HandleInUse, InvalidHandle, IpamError, NoPool,
                                  PoolExhausted)

__all__ = ["Allocation", "Ipam", "check_handle", "AddressInUse", "HandleInUse",
           "InvalidHandle", "IpamError", "NoPool", "PoolExhausted"]
