"""The errors IPAM raises; each message names the thing and what to do about it."""


class IpamError(Exception):
    """Base of IPAM's errors."""


class NoPool(IpamError):
    """No (enabled) pool to allocate from, or a requested pool that does not exist."""


class PoolExhausted(IpamError):
    """Every address of the usable pools is taken (or may not be borrowed)."""


class AddressInUse(IpamError):
    """A specific address that was asked for is already held."""


class HandleInUse(IpamError):
    """An exclusive allocation for a handle that already holds addresses."""


class InvalidHandle(IpamError):
    """A handle id that cannot be an etcd key segment."""
