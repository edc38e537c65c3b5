"""Test support: doubles for parts of Kubernetes this machine cannot run (see
:mod:`harness.local_node`) and the polling helper of every tier (:mod:`harness.polling`)."""
