"""Identity and roles: bearer JWTs (built-in issuer or an external OIDC issuer such as Keycloak), machine keys,
and the one table of which role may do what."""
