"""Hosted inference endpoints: the service (create, update, scale, delete), their rows, their quota reservations, and
the router. Serving requests is the gateway's job (haihe.platform.gateway).
"""
