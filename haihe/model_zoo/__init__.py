"""The shared model zoo over MLflow's Model Registry: cards, versions, aliases, lineage and loading.
"""
