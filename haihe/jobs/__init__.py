"""Jobs: the JobSpec a researcher writes, rendering it into a scheduler's neutral Launch, and the runtime
that runs ON compute nodes (it imports datasets and model_zoo, never platform).
"""
