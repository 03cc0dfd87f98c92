"""The pipeline's steps, each a plain function: no argparse, DVC or KFP inside.

The `cyclegan` CLI (used by dvc.yaml) and the KFP components are thin adapters over these.
"""
