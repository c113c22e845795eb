"""From a bearer credential to a principal: a JWT through its issuer's keys, or a machine key."""

from __future__ import annotations

from control_plane.core.auth.machine_keys import MachineKeyStore, is_machine_key
from control_plane.core.auth.tokens import AuthError, Principal, TokenVerifier


class Authenticator:
    def __init__(self, *, verifier: TokenVerifier, machine_keys: MachineKeyStore) -> None:
        self.verifier = verifier
        self.machine_keys = machine_keys

    def cached(self, credential: str | None) -> Principal | None:
        """The principal of a token verified earlier and still valid, without any I/O; None otherwise."""
        if not credential or is_machine_key(credential):
            return None
        return self.verifier.cached(credential)

    def authenticate(self, credential: str | None, *, machine_key_allowed: bool) -> Principal:
        """The caller behind a bearer credential, or ``AuthError``. Machine keys are refused outright on routes
        that cannot admit them."""
        if not credential:
            raise AuthError("missing bearer credential")
        if is_machine_key(credential):
            if not machine_key_allowed:
                raise AuthError("machine keys are accepted only on ingest and metrics routes")
            return self.machine_keys.verify(credential)
        return self.verifier.verify(credential)
