"""The GDMix Kubeflow pipeline, built from a GDMix YAML configuration."""
