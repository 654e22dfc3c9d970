"""The inference gateway: API keys, rate limits, quotas and metering in front of Ray Serve and Slurm model servers.

``hub.EndpointsHub`` holds the gateway's in-memory state (routes, buckets, meter, key cache) and the endpoint
supervisor thread; ``routes.router`` speaks the Open Inference Protocol v2 and OpenAI's ``/v1/embeddings``.
Nothing here imports Ray at module import time: the Ray runtime connects on the first Ray endpoint.
"""
