"""Where a client's role comes from: Proxy-Authorization credentials (SPEC 5.1).

With ``proxy_auth`` configured, a client names itself with Basic credentials:

- ``password_env``: any user name with the password held in that environment
  variable gets the role ``role`` (``authed`` by default), as fly.io's
  deployment of Smokescreen does;
- ``users_file``: one ``user:role:hash`` line per user, the hash made by
  ``fastfog hash-password`` (scrypt, ``scrypt$N$r$p$salt$key`` in base64);
  Apache ``htpasswd -B`` lines (``user:$2y$...``, bcrypt) are read too, so
  existing password files can be reused: such a user's role is the one
  ``user_roles`` maps it to, else ``role``.

Passwords are compared in constant time. Checking a users-file password costs
an scrypt run, so credentials that were verified once are remembered (by a
digest of the header, never the password itself) until the file changes.
"""

import base64
import binascii
import hashlib
import hmac
import os

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_VERIFIED_LIMIT = 10_000


class RoleError(ValueError):
    """Credentials configuration that cannot be used."""


def hash_password(password, salt=None):
    """The ``scrypt$N$r$p$salt$key`` string for a users file."""
    salt = salt or os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(key).decode()}"


def _check_hash(password, stored):
    if stored.startswith(BCRYPT_PREFIXES):
        import bcrypt

        try:
            return bcrypt.checkpw(password.encode(), stored.encode())
        except ValueError:
            return False
    _, n, r, p, salt, key = stored.split("$")
    expected = base64.b64decode(key)
    actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                            dklen=len(expected), maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(actual, expected)


BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")


def read_users(path):
    """``user:role:hash`` lines, or htpasswd's bcrypt ``user:hash`` lines → {user: (role or None,
    hash)}; RoleError names the file and line."""
    users = {}
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as err:
        raise RoleError(f"{path}: {err.strerror}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) == 2 and parts[0] and parts[1].startswith(BCRYPT_PREFIXES):  # htpasswd -B
            parts = [parts[0], None, parts[1]]
        elif len(parts) != 3 or not parts[0] or not parts[2].startswith("scrypt$") or parts[2].count("$") != 5:
            raise RoleError(f"{path}:{number}: expected user:role:scrypt$N$r$p$salt$key "
                            "(made by fastfog hash-password) or an htpasswd bcrypt line, user:$2y$...")
        if parts[0] in users:
            raise RoleError(f"{path}:{number}: user {parts[0]!r} is listed twice")
        users[parts[0]] = (parts[1], parts[2])
    return users


def basic_credentials(value):
    """A Proxy-Authorization value → (user, password), or None when it is not valid Basic credentials."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


class ProxyAuth:
    """Checks Proxy-Authorization headers against the configured password and users."""

    def __init__(self, settings, environ=None):
        environ = os.environ if environ is None else environ
        self.realm = settings.get("realm") or "fastfog"
        self.role = settings.get("role") or "authed"
        self._password = None
        if settings.get("password_env"):
            self._password = environ.get(settings["password_env"])
            if not self._password:
                raise RoleError(f"password_env: the environment variable {settings['password_env']} "
                                "is not set or empty")
        roles = settings.get("user_roles") or {}
        self._users = {user: (role if role is not None else roles.get(user, self.role), stored)
                       for user, (role, stored) in (read_users(settings["users_file"]).items()
                                                    if settings.get("users_file") else ())}
        if self._password is None and not self._users:
            raise RoleError("needs password_env or a users_file with at least one user")
        self._verified = {}

    def role_of(self, header):
        """The role for a Proxy-Authorization value, or None when the credentials are wrong."""
        credentials = basic_credentials(header)
        if credentials is None:
            return None
        user, password = credentials
        if self._password is not None and hmac.compare_digest(password.encode(), self._password.encode()):
            return self.role
        entry = self._users.get(user)
        if entry is None:
            return None
        digest = hashlib.sha256(header.encode()).digest()
        role = self._verified.get(digest)
        if role is None and _check_hash(password, entry[1]):
            if len(self._verified) >= _VERIFIED_LIMIT:
                self._verified.clear()
            role = self._verified[digest] = entry[0]
        return role


class RequestView:
    """What a ``role_from_request`` plugin sees of a request.

    ``client_address``: (ip, port) of the client; ``method``, ``target``: from the request
    line; ``headers``: [(name, value)] as received, as str; ``peer_certificate``: the client
    certificate as ``ssl.SSLSocket.getpeercert()`` gives it, or None (no TLS, or none sent).
    """

    __slots__ = ("client_address", "method", "target", "headers", "peer_certificate")

    def __init__(self, client_address: tuple[str, int], method: str, target: str, headers: list[tuple[str, str]],
                 peer_certificate: dict | None = None) -> None:
        self.client_address = client_address
        self.method = method
        self.target = target
        self.headers = headers
        self.peer_certificate = peer_certificate

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)


def load_plugin(reference):
    """``package.module:function`` → the function; RoleError when it cannot be imported."""
    import importlib

    module_name, _, function_name = reference.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except Exception as err:  # an import error of any kind in the user's module
        raise RoleError(f"cannot load {reference}: {type(err).__name__}: {err}") from None
    if not callable(function):
        raise RoleError(f"{reference} is not callable")
    return function
