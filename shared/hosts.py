"""Host names as the platform judges them, on both sides: which are this machine, which bind
every interface, and the comma-separated lists settings hold."""

import ipaddress

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # bind addresses meaning "every interface"


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1); a look-alike name is not."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name, not an address
        return host.lower() == "localhost"


def is_local(host: str) -> bool:
    """A host nothing outside this machine can reach: loopback, or a wildcard bind address."""
    return is_loopback(host) or host in WILDCARD_HOSTS


def host_list(text: str) -> list[str]:
    """A comma-separated list of host names, as a setting holds it, lower case."""
    return [host.strip().lower() for host in text.split(",") if host.strip()]


def is_public_address(address: str) -> bool:
    """Whether `address` (an IP address) is reachable on the public internet: not private,
    loopback, link-local, multicast, reserved or shared (an IPv4-mapped IPv6 address is
    judged by its IPv4 address)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope (`%eth0`) aside
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
