"""The web portal: server-rendered pages calling the same platform services as the REST API.
"""
