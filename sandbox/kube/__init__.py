"""A Kubernetes API server simulator for the local stack and the runbooks' tests.

It speaks the REST API well enough for the official ``kubernetes`` client and
``kubectl`` to use it unmodified: discovery (plain and aggregated), server-side
tables, watches, patches (JSON, merge, strategic merge), the ``scale``,
``status`` and ``log`` subresources, and metrics.k8s.io. Everything is kept in
memory, optionally snapshotted to a JSON file.

A control loop ticks every ``tick_seconds`` and plays the cluster's parts:

* Deployment controller: a pod template change makes a ReplicaSet
  ``<deployment>-<template hash>`` at the next revision; going back to an old
  template reuses its ReplicaSet and gives it the next revision (so
  ``kubectl rollout undo``/``history`` behave as on a cluster). Rolling updates
  honour maxSurge/maxUnavailable; status, the Available and Progressing
  conditions and ``progressDeadlineSeconds`` (real seconds) follow the real
  controller, as do ``revisionHistoryLimit``, ``paused`` and ``Recreate``.
* Kubelet: a pod is scheduled at once, runs after 30% of
  ``ready_delay_seconds`` and turns Ready after ``ready_delay_seconds``.

Simulation rules:

* An image whose tag ends in ``-crashloop`` never becomes ready: its container
  waits in ``CrashLoopBackOff`` with ``restartCount`` climbing once per
  ``ready_delay_seconds``, so a rollout to it ends in ProgressDeadlineExceeded
  while the old pods keep serving. ``KubeSimulator.set_pods_crashing`` does the
  same to every pod of one Deployment, reversibly.
* Tags ending in ``-errors`` become ready normally (the app stub, not this
  package, makes them answer some requests with 5xx).
* A Job's pod runs for ``ready_delay_seconds`` and exits with the code in its
  container's env ``SIMULATED_EXIT_CODE`` (default 0), or 1 for a
  ``-crashloop`` image. Failed pods are retried after a short back-off until
  ``backoffLimit`` is exceeded, then the Job gets condition Failed with reason
  BackoffLimitExceeded; success gives condition Complete. A Job's pod log is
  ``$ <command and args>``, then the lines of env ``SIMULATED_OUTPUT`` (split on
  newlines) and finally ``exit code <n>``. ``restartPolicy: OnFailure`` is run
  like ``Never`` (a new pod per attempt).
* PodMetrics report about 300Mi of memory per running container unless
  ``KubeSimulator.set_memory_usage`` set a figure for its Deployment.
"""

from sandbox.kube.kubeconfig import write_kubeconfig
from sandbox.kube.simulator import KubeSimulator

__all__ = ["KubeSimulator", "write_kubeconfig"]
