"""Jobs: the submission service (admission, row, reservation, hand-off), the dispatcher of stored jobs, the reconciler
with its one state machine, workdir bundles, the Ray placement policy, the cluster view, and their routers.
"""
