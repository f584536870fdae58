"""fastfog's configuration: Smokescreen's YAML keys and flags, validated into one immutable Config.

One table, ``KEYS``, lists every setting with its parser, default and flag, so
the YAML file and the command line share their validation. Rules, as in
Smokescreen:

- the YAML file is strict: an unknown key is an error naming the key;
- a flag overrides the file only when it is given; list flags append;
- durations are Go's (``10s``, ``1m30s``, ``500ms``, ``1h2m3.5s``).

Every error names where the bad value came from (the file or the flag), the
key and the reason. fastfog's own keys (SPEC section 5) are validated here
too; ``Config.not_yet_supported`` names those set in a file whose feature the
proxy does not have yet, so that ``serve`` refuses them instead of ignoring
them.
"""

import difflib
import ipaddress
import math
import re
import ssl
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from fastfog.acl import ACTIONS, AclError, load_acl
from fastfog.classify import parse_address_entry
from fastfog.roles import ProxyAuth, RoleError, load_plugin
from fastfog.yamlfile import line_of, read_yaml


class ConfigError(ValueError):
    """A configuration that cannot be used: ``<file or flag>: <key>: <reason>``."""


# --- value parsers: value (from YAML, or a flag's string) → parsed value; ValueError(reason) ---

DURATION_PATTERN = r"^[+-]?(0|([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+)$"
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


_SCHEMAS: dict = {}  # parser -> the JSON Schema of what it accepts (see json_schema)
_ITEMS: dict = {}  # a list's parser -> its items' parser (list flags parse their values one by one)


def _described(parse, schema):
    _SCHEMAS[parse] = schema
    return parse


def schema_of(parse):
    return _SCHEMAS[parse]


def is_listing(parse):
    """Whether ``parse`` reads a list (its flag may be given several times)."""
    return parse in _ITEMS


def parse_duration(text):
    """A Go duration string → seconds (float). ``0`` is the one number allowed without a unit."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as 10s or 1m30s, got {text!r}")
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    if body == "0":
        return 0.0
    total, position = 0.0, 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f"invalid duration {text!r}: expected a number and a unit (ns, us, ms, s, m, h)")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def format_duration(seconds):
    """Seconds → the shortest Go-style duration that says it (for check-config output)."""
    if seconds == 0:
        return "0s"
    parts, rest = [], seconds
    for unit, size in (("h", 3600), ("m", 60)):
        if rest >= size:
            count = int(rest // size)
            parts.append(f"{count}{unit}")
            rest -= count * size
    if rest:
        parts.append(f"{rest:g}s" if rest >= 1 else f"{rest * 1000:g}ms")
    return "".join(parts)


def duration(value):
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError(f"{value!r} must not be negative")
    return seconds


_described(duration, {"type": "string", "pattern": DURATION_PATTERN, "description": "a Go duration: 10s, 1m30s, 500ms"})


def boolean(value):
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {value!r}")


_described(boolean, {"type": "boolean"})


def integer(minimum=0, maximum=None):
    def parse(value):
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
            value = int(value)
        if type(value) is not int:
            raise ValueError(f"expected an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and at most {maximum}"
            raise ValueError(f"{value} must be at least {minimum}{upper}")
        return value
    bounds = {"minimum": minimum, **({} if maximum is None else {"maximum": maximum})}
    return _described(parse, {"type": "integer", **bounds})


def number(value):
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{value} must not be negative")
    return float(value)


_described(number, {"type": "number", "minimum": 0})


def string(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


_described(string, {"type": "string"})


def choice(*options):
    def parse(value):
        if value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return value
    return _described(parse, {"enum": list(options)})


def ip_address(value):
    """A listen address: an IP literal (IPv6 with or without brackets), or empty for every address."""
    text = string(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text == "":
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


_described(ip_address, {"type": "string", "description": "an IP address (empty: every address)"})


def host_port(value):
    """``host:port`` (``[v6]:port``) with a port from 1 to 65535."""
    text = string(value)
    host, separator, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address needs brackets, as [::1]:53")
    if not separator or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port with a port from 1 to 65535")
    return text


_described(host_port, {"type": "string", "description": "host:port"})


def ip_port(value):
    """``IP:PORT``, an address literal (for resolvers: no name to resolve before resolving)."""
    text = host_port(value)
    host = text.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return text


_described(ip_port, {"type": "string", "description": "IP:PORT ([v6]:PORT)"})


def cidr(value):
    text = string(value)
    if "/" not in text:
        raise ValueError(f"invalid CIDR address: {text}")
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"invalid CIDR address: {text}") from None


_described(cidr, {"type": "string", "description": "a CIDR block"})


def address_entry(value):
    text = string(value)
    parse_address_entry(text)
    return text


_described(address_entry, {"type": "string", "description": "IP or IP:PORT"})


def file_mode(value):
    """An octal file mode such as ``700`` (YAML may give it as a number: its digits are read as octal)."""
    text = str(value) if type(value) is int else string(value)
    if not re.fullmatch(r"0?[0-7]{1,3}", text):
        raise ValueError(f"{text!r} is not an octal file mode such as 700")
    return int(text, 8)


_described(file_mode, {"type": ["string", "integer"], "description": "an octal file mode such as 700"})


def plugin_reference(value):
    text = string(value)
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", text):
        raise ValueError(f"{text!r} is not module:function")
    return text


_described(plugin_reference, {"type": "string", "pattern": "^[A-Za-z_][\\w.]*:[A-Za-z_]\\w*$"})


def listing(item):
    """A list whose items each pass ``item``; a single flag value arrives as one item."""
    def parse(value):
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(_at(index, item, entry) for index, entry in enumerate(value))
    _ITEMS[parse] = item
    _described(parse, {"type": "array", "items": schema_of(item)})
    return parse


def _at(index, parse, value):
    try:
        return parse(value)
    except ValueError as err:
        raise ValueError(f"[{index}]: {err}") from None


def block(schema, required=()):
    """A mapping with known keys only: {key: parser}. Missing keys are None unless required."""
    def parse(value):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        unknown = sorted(set(value) - set(schema), key=str)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}")
        parsed = {}
        for key, parser in schema.items():
            if key in value and value[key] is not None:
                try:
                    parsed[key] = parser(value[key])
                except ValueError as err:
                    raise ValueError(f"{key}: {err}") from None
            elif key in required:
                raise ValueError(f"{key}: required")
            else:
                parsed[key] = None
        return MappingProxyType(parsed)
    return _described(parse, {"type": "object", "additionalProperties": False,
                               "properties": {key: schema_of(parser) for key, parser in schema.items()},
                               **({"required": list(required)} if required else {})})


def mapping(value_parser, keyed_by="role"):
    def parse(value):
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise ValueError(f"expected a mapping keyed by {keyed_by}, got {value!r}")
        parsed = {}
        for key, item in value.items():
            try:
                parsed[key] = value_parser(item)
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
        return MappingProxyType(parsed)
    return _described(parse, {"type": "object", "additionalProperties": schema_of(value_parser)})


_LIMITS = {
    "max_request_rate": number,
    "max_request_burst": integer(0),
    "max_concurrent_requests": integer(0),
    "max_concurrent_connect_tunnels": integer(0),
}

_TLS = block({
    "cert_file": string,
    "key_file": string,
    "client_ca_files": listing(string),
    "crl_files": listing(string),
}, required=("cert_file",))

_WEBHOOK = block({
    "url": string,
    "tls_verify": boolean,
    "ca_file": string,
    "hostid": string,
    "ping_interval": duration,
    "timeout": duration,
    "max_queue": integer(1),
    "events": listing(choice("ping", "neighbor", "connection-start", "connection-stop", "connection-info")),
    "access_request": block({
        "enabled": boolean,
        "roles": listing(string),
        "timeout": duration,
        "fail_closed": boolean,
        "cache_ttl": duration,
    }),
}, required=("url",))

_PROXY_AUTH = block({
    "password_env": string,
    "role": string,
    "users_file": string,
    "user_roles": mapping(string, "user"),  # htpasswd users' roles (their lines carry none)
    "realm": string,
})

_TCP_KEEPALIVE = block({
    "enabled": boolean,
    "idle": duration,
    "interval": duration,
    "count": integer(1, 127),
})

_DNS_CACHE = block({
    "max_entries": integer(0),
    "max_bytes": integer(0),
    "min_ttl": duration,
    "max_ttl": duration,
    "negative_ttl": duration,
})


@dataclass(frozen=True)
class Key:
    """One setting: its YAML key (None: flag only), parser, default and flag."""

    name: str  # the Config attribute
    parse: object
    default: object = None
    yaml: str | None = "same"
    flag: str | None = None
    flag_help: str = ""
    flag_metavar: str | None = None

    @property
    def yaml_key(self):
        return self.name if self.yaml == "same" else self.yaml


MINUTE = 60.0

KEYS = (
    Key("ip", ip_address, "", flag="--listen-ip", flag_metavar="IP",
        flag_help="address to listen on (default: every address)"),
    Key("port", integer(0, 65535), 4750, flag="--listen-port", flag_metavar="PORT",
        flag_help="port to listen on (0: any free port)"),
    Key("connect_timeout", duration, 10.0, flag="--timeout", flag_metavar="DURATION",
        flag_help="dial timeout (default 10s)"),
    Key("support_proxy_protocol", boolean, False, flag="--proxy-protocol",
        flag_help="accept PROXY protocol v1 and v2 headers"),
    Key("deny_ranges", listing(cidr), (), flag="--deny-range", flag_metavar="CIDR",
        flag_help="deny destinations in this range (repeatable)"),
    Key("allow_ranges", listing(cidr), (), flag="--allow-range", flag_metavar="CIDR",
        flag_help="allow destinations in this range, even non-public ones (repeatable)"),
    Key("deny_addresses", listing(address_entry), (), flag="--deny-address", flag_metavar="IP[:PORT]",
        flag_help="deny this destination address (repeatable)"),
    Key("allow_addresses", listing(address_entry), (), flag="--allow-address", flag_metavar="IP[:PORT]",
        flag_help="allow this destination address (repeatable)"),
    Key("acl_file", string, None, flag="--egress-acl-file", flag_metavar="FILE",
        flag_help="egress ACL (default: every host allowed)"),
    Key("expose_prometheus_metrics", boolean, False, yaml=None, flag="--expose-prometheus-metrics",
        flag_help="serve Prometheus metrics"),
    Key("prometheus_endpoint", string, "/metrics", yaml=None, flag="--prometheus-endpoint",
        flag_metavar="PATH", flag_help="metrics path (default /metrics)"),
    Key("prometheus_listen_ip", ip_address, "0.0.0.0", yaml=None, flag="--prometheus-listen-ip",
        flag_metavar="IP", flag_help="metrics address (default 0.0.0.0)"),
    Key("prometheus_port", integer(0, 65535), 9810, yaml=None, flag="--prometheus-port",
        flag_metavar="PORT", flag_help="metrics port (default 9810)"),
    Key("resolver_addresses", listing(ip_port), (), flag="--resolver-address", flag_metavar="IP:PORT",
        flag_help="DNS server to use (repeatable; default: /etc/resolv.conf)"),
    Key("statsd_address", host_port, None, flag="--statsd-address", flag_metavar="HOST:PORT",
        flag_help="send DogStatsD metrics here"),
    Key("tls", _TLS, None),
    Key("deny_message_extra", string, "", flag="--additional-error-message-on-deny", flag_metavar="MSG",
        flag_help="appended to deny and error answers"),
    Key("disabled_acl_policy_actions", listing(choice(*ACTIONS)), (), yaml=None,
        flag="--disable-acl-policy-action", flag_metavar="ACTION",
        flag_help="refuse ACLs whose rules use this action (repeatable)"),
    Key("stats_socket_dir", string, None, flag="--stats-socket-dir", flag_metavar="DIR",
        flag_help="serve open-tunnel stats on DIR/track-<pid>.sock"),
    Key("stats_socket_file_mode", file_mode, 0o700, flag="--stats-socket-file-mode", flag_metavar="MODE",
        flag_help="stats socket file mode (default 700)"),
    Key("unsafe_allow_private_ranges", boolean, False, flag="--unsafe-allow-private-ranges",
        flag_help="allow RFC 1918 and fc00::/7 destinations"),
    Key("max_concurrent_requests", integer(0), 0, flag="--max-concurrent-requests", flag_metavar="N",
        flag_help="requests processed at once (0: unlimited)"),
    Key("max_request_rate", number, 0.0, flag="--max-request-rate", flag_metavar="R",
        flag_help="requests per second (0: unlimited)"),
    Key("max_request_burst", integer(0), None, flag="--max-request-burst", flag_metavar="N",
        flag_help="burst above the rate (default 2x rate; must exceed the rate)"),
    Key("max_concurrent_connect_tunnels", integer(0), 0, flag="--max-concurrent-connect-tunnels",
        flag_metavar="N", flag_help="open CONNECT tunnels (0: unlimited)"),
    Key("dns_timeout", duration, 5.0, flag="--dns-timeout", flag_metavar="DURATION",
        flag_help="DNS timeout (default 5s)"),
    Key("allow_missing_role", boolean, False),
    Key("network", choice("ip", "ip4", "ip6"), "ip"),
    Key("idle_timeout", duration, 0.0),
    Key("exit_timeout", duration, 500 * MINUTE),
    Key("read_header_timeout", duration, 300.0),
    Key("read_timeout", duration, 300.0),
    Key("write_timeout", duration, 300.0),
    Key("transport_max_idle_conns", integer(0), 0),
    Key("transport_max_idle_conns_per_host", integer(0), 0),
    Key("time_connect", boolean, False),
    Key("mitm_ca_cert_file", string, None),
    Key("mitm_ca_key_file", string, None),
    # fastfog's own (SPEC section 5)
    Key("workers", integer(1, 1024), 1, flag="--workers", flag_metavar="N",
        flag_help="worker processes sharing the port (default 1)"),
    Key("log_format", choice("json", "logfmt"), "json", flag="--log-format", flag_metavar="FORMAT",
        flag_help="json (default) or logfmt"),
    Key("log_level", choice("debug", "info", "warn", "warning", "error"), "info", flag="--log-level",
        flag_metavar="LEVEL", flag_help="the least severe records written: debug, info (default), warn, error"),
    Key("role_from_request", plugin_reference, None),
    Key("proxy_auth", _PROXY_AUTH, None),
    Key("webhook", _WEBHOOK, None),
    Key("admin_socket", string, None),
    Key("sni_check", choice("off", "report", "enforce"), "off"),
    Key("role_limits", mapping(block(_LIMITS)), MappingProxyType({})),
    Key("dns_cache", _DNS_CACHE, None),
    Key("tcp_keepalive", _TCP_KEEPALIVE, None),
    Key("log_buffer_bytes", integer(0), 4 << 20),
)

KEYS_BY_YAML = {key.yaml_key: key for key in KEYS if key.yaml_key is not None}

# Settings whose feature the proxy does not have yet: serve refuses them when they differ
# from their default. Each piece of work that brings a feature removes its keys from here.
NOT_YET_SUPPORTED: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Config:
    """Every setting, validated. Durations are seconds; lists are tuples; ``acl`` is loaded."""

    ip: str = ""
    port: int = 4750
    connect_timeout: float = 10.0
    support_proxy_protocol: bool = False
    deny_ranges: tuple = ()
    allow_ranges: tuple = ()
    deny_addresses: tuple = ()
    allow_addresses: tuple = ()
    acl_file: str | None = None
    expose_prometheus_metrics: bool = False
    prometheus_endpoint: str = "/metrics"
    prometheus_listen_ip: str = "0.0.0.0"
    prometheus_port: int = 9810
    resolver_addresses: tuple = ()
    statsd_address: str | None = None
    tls: object = None
    deny_message_extra: str = ""
    disabled_acl_policy_actions: tuple = ()
    stats_socket_dir: str | None = None
    stats_socket_file_mode: int = 0o700
    unsafe_allow_private_ranges: bool = False
    max_concurrent_requests: int = 0
    max_request_rate: float = 0.0
    max_request_burst: int | None = None
    max_concurrent_connect_tunnels: int = 0
    dns_timeout: float = 5.0
    allow_missing_role: bool = False
    network: str = "ip"
    idle_timeout: float = 0.0
    exit_timeout: float = 500 * MINUTE
    read_header_timeout: float = 300.0
    read_timeout: float = 300.0
    write_timeout: float = 300.0
    transport_max_idle_conns: int = 0
    transport_max_idle_conns_per_host: int = 0
    time_connect: bool = False
    mitm_ca_cert_file: str | None = None
    mitm_ca_key_file: str | None = None
    workers: int = 1
    log_format: str = "json"
    log_level: str = "info"
    role_from_request: str | None = None
    proxy_auth: object = None
    webhook: object = None
    admin_socket: str | None = None
    sni_check: str = "off"
    role_limits: object = field(default_factory=lambda: MappingProxyType({}))
    dns_cache: object = None
    tcp_keepalive: object = None
    log_buffer_bytes: int = 4 << 20
    # derived
    source: str | None = None  # the config file, if any
    acl: object = None  # fastfog.acl.Acl when acl_file is set
    auth: object = None  # fastfog.roles.ProxyAuth when proxy_auth is set
    role_plugin: object = None  # the role_from_request callable
    server_tls: object = None  # fastfog.tls.ServerTLS when tls is set
    mitm: object = None  # fastfog.mitm.MitmAuthority when mitm_ca_cert_file is set

    def warnings(self):
        """What loads but cannot be what was meant, such as a configuration that denies everything."""
        found = []
        role_sources = (self.role_plugin, self.auth, self.server_tls is not None and self.server_tls.verifies_clients)
        if self.acl is not None and not any(role_sources) and not self.allow_missing_role:
            found.append("an ACL with no way to learn a client's role (no tls.client_ca_files, no proxy_auth, "
                         "no role_from_request) and allow_missing_role false: every request would be denied "
                         "'Client role cannot be determined'")
        return found

    def not_yet_supported(self):
        """Keys set to something the proxy cannot do yet, each with why: serve refuses these."""
        problems = []
        for key in KEYS:
            value = getattr(self, key.name)
            if key.name in NOT_YET_SUPPORTED and value != key.default:
                problems.append(f"{key.name}: not supported yet by this version of fastfog")
        return problems

    def summary(self):
        """The parsed configuration as plain data, durations in Go form (check-config prints it)."""
        found = {}
        for key in KEYS:
            value = getattr(self, key.name)
            if key.parse is duration:
                value = format_duration(value)
            elif key.name == "stats_socket_file_mode":
                value = f"{value:o}"
            found[key.name] = _plain(value)
        found["acl"] = None if self.acl is None else self.acl.summary()
        return found


def _plain(value):
    if isinstance(value, MappingProxyType):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_config_file(path, problems=None):
    """The YAML file → {key: parsed value} for the keys it sets; ConfigError names file and key.
    ``problems``: a list to gather every key's error in, going on past them (for check-config)."""
    document = read_yaml(path, ConfigError)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    values = {}
    for yaml_key, raw in document.items():
        key = KEYS_BY_YAML.get(yaml_key)
        where = f"{path}: {line_of(document, yaml_key)}{yaml_key}"
        try:
            if key is None:
                nearest = nearest_key(str(yaml_key))
                raise ConfigError(f"{where}: unknown key" + (f" (did you mean {nearest!r}?)" if nearest else ""))
            if raw is None:
                continue
            try:
                values[key.name] = key.parse(raw)
            except ValueError as err:
                raise ConfigError(f"{where}: {err}") from None
        except ConfigError as err:
            if problems is None:
                raise
            problems.append(str(err))
    return values


def nearest_key(name):
    """The config key meant by an unknown ``name``: the key of a flag spelled that way
    (``listen_port`` for --listen-port is ``port``), else the closest key, else None."""
    by_flag = {key.flag.lstrip("-").replace("-", "_"): key.yaml_key for key in KEYS
               if key.flag is not None and key.yaml_key is not None}
    if name in by_flag:
        return by_flag[name]
    nearest = difflib.get_close_matches(name, list(KEYS_BY_YAML), n=1)
    return nearest[0] if nearest else None


def config_problems(path, flags=None):
    """Every problem of a config file and the ACL it names, not only the first: each key and
    each ACL rule is checked on its own (check-config). An empty list: it loads."""
    from fastfog.acl import acl_problems

    problems = []
    try:
        values = apply_flags(read_config_file(path, problems), flags or {})
    except ConfigError as err:
        return [*problems, str(err)]
    if values.get("acl_file"):
        try:
            document = read_yaml(values["acl_file"], AclError)
        except AclError as err:
            problems.append(str(err))
        else:
            problems += acl_problems(document, values["acl_file"], values.get("disabled_acl_policy_actions", ()))
    if not problems:
        try:
            build_config(values, source=path)
        except ConfigError as err:
            problems.append(str(err))
    return problems


def apply_flags(values, flags):
    """Merge flag values ({Config attribute: str, bool or list of str}, None = not given) into
    ``values``: a flag overrides the file's value, a list flag appends to the file's list."""
    merged = dict(values)
    by_name = {key.name: key for key in KEYS}
    flags = dict(flags)
    tls_flags = flags.pop("tls", None)
    if tls_flags:
        merged["tls"] = _merge_tls_flags(merged.get("tls"), tls_flags)
    for name, given in flags.items():
        if given is None or given is False or given == []:
            continue
        key = by_name[name]
        try:
            if isinstance(given, list):
                merged[name] = tuple(merged.get(name, ())) + tuple(
                    _at(index, _ITEMS[key.parse], item) for index, item in enumerate(given))
            else:
                merged[name] = key.parse(given)
        except ValueError as err:
            raise ConfigError(f"{key.flag}: {err}") from None
    return merged


def _merge_tls_flags(tls, given):
    """--tls-server-bundle-file sets cert and key (one PEM); the CA and CRL flags append."""
    tls = dict(tls or {"cert_file": None, "key_file": None, "client_ca_files": (), "crl_files": ()})
    if given.get("cert_file"):
        tls["cert_file"], tls["key_file"] = given["cert_file"], None
    for key in ("client_ca_files", "crl_files"):
        tls[key] = tuple(tls[key] or ()) + tuple(given.get(key) or ())
    if tls["cert_file"] is None:
        raise ConfigError("--tls-client-ca-file, --tls-crl-file: need a server certificate "
                          "(--tls-server-bundle-file or tls.cert_file)")
    return MappingProxyType(tls)


def _check_tls_files(tls, source):
    """Build the listener's TLS exactly as serve will, so a bad file fails at load, not later."""
    from fastfog.tls import ServerTLS, TLSConfigError

    try:
        return ServerTLS(tls)
    except TLSConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def build_config(values, source=None):
    """Validated {Config attribute: value} → Config, with the cross-key checks and the ACL loaded."""
    where = source or "command line"
    rate = values.get("max_request_rate", 0.0)
    burst = values.get("max_request_burst")
    if burst is not None and rate > 0 and burst <= rate:
        raise ConfigError(f"{where}: max_request_burst: {burst} must be greater than max_request_rate "
                          f"({rate:g}); omit it to use the default (2x rate)")
    cert, key_file = values.get("mitm_ca_cert_file"), values.get("mitm_ca_key_file")
    if (cert is None) != (key_file is None):
        missing = "mitm_ca_cert_file" if cert is None else "mitm_ca_key_file"
        other = "mitm_ca_key_file" if cert is None else "mitm_ca_cert_file"
        raise ConfigError(f"{where}: {missing}: required when {other} is set")
    mitm = None
    if cert is not None:
        from fastfog.mitm import MitmAuthority, MitmError

        try:
            mitm = MitmAuthority(cert, key_file)
        except MitmError as err:
            raise ConfigError(f"{where}: {err}") from None
    server_tls = _check_tls_files(values["tls"], where) if values.get("tls") is not None else None
    for name, limits in (values.get("role_limits") or {}).items():
        role_rate, role_burst = limits["max_request_rate"] or 0.0, limits["max_request_burst"]
        if role_burst is not None and role_rate > 0 and role_burst <= role_rate:
            raise ConfigError(f"{where}: role_limits: {name}: max_request_burst must be greater than "
                              f"max_request_rate")
    if values.get("dns_timeout") == 0:
        values = {**values, "dns_timeout": 5.0}  # as Smokescreen: 0 means the default
    acl = None
    if values.get("acl_file"):
        try:
            acl = load_acl(values["acl_file"], values.get("disabled_acl_policy_actions", ()))
        except AclError as err:
            raise ConfigError(str(err)) from None
    auth = None
    if values.get("proxy_auth") is not None:
        try:
            auth = ProxyAuth(values["proxy_auth"])
        except RoleError as err:
            raise ConfigError(f"{where}: proxy_auth: {err}") from None
    plugin = None
    if values.get("role_from_request") is not None:
        if auth is not None:
            raise ConfigError(f"{where}: role_from_request: cannot be combined with proxy_auth: "
                              "a plugin decides the role on its own (it can read Proxy-Authorization)")
        try:
            plugin = load_plugin(values["role_from_request"])
        except RoleError as err:
            raise ConfigError(f"{where}: role_from_request: {err}") from None
    if values.get("webhook") is not None:
        from fastfog.webhooks import Client

        hook = values["webhook"]
        try:
            Client(hook["url"], hook["tls_verify"] is not False, hook["ca_file"])
        except (ValueError, OSError, ssl.SSLError) as err:
            key = "webhook.ca_file" if isinstance(err, (OSError, ssl.SSLError)) else "webhook.url"
            raise ConfigError(f"{where}: {key}: {getattr(err, 'strerror', None) or err}") from None
    known = {f.name for f in fields(Config)}
    return Config(**{name: value for name, value in values.items() if name in known}, source=source, acl=acl,
                  auth=auth, role_plugin=plugin, server_tls=server_tls, mitm=mitm)


def json_schema():
    """The config file's JSON Schema, made from KEYS (the table the loader uses): for editors."""
    properties = {}
    for key in KEYS:
        if key.yaml_key is None:
            continue
        schema = dict(schema_of(key.parse))
        if key.flag_help:
            schema.setdefault("description", key.flag_help)
        properties[key.yaml_key] = schema
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "fastfog config",
            "type": "object", "additionalProperties": False, "properties": properties}


def load_config(path: str | None = None, flags: dict | None = None) -> Config:
    """The file (if any) and the flags (if any) → Config; ConfigError on any problem."""
    values = read_config_file(path) if path else {}
    values = apply_flags(values, flags or {})
    return build_config(values, source=path)
