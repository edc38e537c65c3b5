"""Test doubles for parts of Kubernetes this machine cannot run (see :mod:`harness.local_node`)."""
