"""OAuth 2.0 authorization server: one module per RFC, a service over them."""
