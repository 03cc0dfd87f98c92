"""The Kubeflow Pipelines side: the DAG, compile/run/schedule/local, and the TFJob launcher."""
