"""Constants of the KFP pipeline, importable without kfp (the CLI parser needs them cheaply)."""

PIPELINE_NAME = "cyclegan-photo2monet"
DEFAULT_MOUNT = "/mnt/cyclegan"

# Secret name -> {secret key: env var}. Required keys must exist in the secret; optional ones
# are set when present (a MinIO endpoint, MLflow basic auth).
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}
S3_OPTIONAL_KEYS = {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
                    "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",
                    "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION"}  # fmt: skip
MLFLOW_KEYS = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}
MLFLOW_OPTIONAL_KEYS = {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}  # fmt: skip

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

# (cpu request, cpu limit, memory request, memory limit) per step.
DEFAULT_RESOURCES = {
    "validate": ("1", "2", "2G", "4G"),
    "preprocess": ("2", "4", "2G", "4G"),
    "train": ("4", "8", "16G", "32G"),
    "train_launcher": ("250m", "1", "512M", "1G"),
    "evaluate": ("2", "4", "8G", "16G"),
    "register": ("1", "2", "2G", "4G"),
}
