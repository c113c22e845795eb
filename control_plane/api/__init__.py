"""HTTP routes of the control-plane kernel itself (health, metrics, JWKS, audit); domains bring their own."""
