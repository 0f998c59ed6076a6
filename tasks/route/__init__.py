"""Routing: features of a request, routers that weigh the experts, exact mixing of their adapters."""
