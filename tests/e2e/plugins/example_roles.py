"""Role plugins used by the end-to-end tests (loaded by fastfog serve as role_from_request)."""

import ipaddress

NETWORKS = {ipaddress.ip_network("203.0.113.0/24"): "doc-net"}


def by_client_network(request):
    """The role of the network the client connects from; a client from elsewhere has none."""
    address = ipaddress.ip_address(request.client_address[0])
    return next((role for network, role in NETWORKS.items() if address in network), None)


def by_service_header(request):
    """Trusts a header; fine for a test, not for production (a client could lie)."""
    service = request.header("X-Service")
    if service == "refused":
        raise PermissionError("this service is blocked")
    return service


def by_organizational_unit(request):
    """The README's example: the first dotted particle of the client certificate's OU."""
    if request.peer_certificate is None:
        return None
    units = [value for rdn in request.peer_certificate["subject"] for key, value in rdn
             if key == "organizationalUnitName"]
    return units[0].split(".")[0] if units else None
