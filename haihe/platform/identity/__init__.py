"""Identity and tenancy: orgs, projects, users, memberships, credentials and login (service), the secret and token
primitives (security), Unix accounts for isolated jobs, and the auth, keys and tenancy routers.
"""
