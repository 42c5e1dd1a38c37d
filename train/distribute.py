"""Where training runs: one device, several GPUs of one host, or several hosts (tf.distribute).

`--strategy default` trains on TensorFlow's default device; `mirrored` on every local GPU with
`tf.distribute.MirroredStrategy`; `multiworker` on a cluster described by `TF_CONFIG` with
`tf.distribute.MultiWorkerMirroredStrategy` (synchronous data parallelism: every replica holds the
same weights, gradients are all-reduced each step). docs/training.md, "More than one machine".

What stays the same whatever the strategy:
- `--batch-size` is the global batch: each of the R replicas gets batch/R images of every step, so
  a run on R replicas takes the same steps, with the same images, as on one device. The learning
  rate is therefore not rescaled; raise it yourself if you raise the global batch (linearly, with
  a warm-up, is the usual rule: Goyal et al. 2017).
- The input is sharded by us, not by tf.data's auto-sharding (policy OFF): replica r of R computes
  only images r, r+R, ... of each global batch (`replica_slice`), decoded and augmented from
  (seed, epoch, step, image) alone, so no worker decodes what another uses.
- BatchNormalization is synchronised across replicas (its statistics are the global batch's).
- Only the chief writes the run folder; other workers write to a temporary folder of their own.

Keras 3 (up to at least 3.15) cannot `fit` under MultiWorkerMirroredStrategy on more than one
worker (keras-team/keras#20585): its trainer reduces a whole data batch, and the per-step logs
along axis 0, with a cross-worker collective that accepts neither. `_keras_multiworker_fix`
replaces those two private steps with what Keras does for MirroredStrategy; the multi-worker test
(tests/test_multiworker.py) fails loudly if a Keras release moves them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

STRATEGIES = ("default", "mirrored", "multiworker")


class ClusterError(ValueError):
    """TF_CONFIG or the strategy's settings are wrong; the message says how."""


@dataclass(frozen=True)
class Task:
    """This process's place in the cluster."""
    strategy: str
    index: int = 0  # this worker's number, 0 .. workers-1 (the chief is 0)
    workers: int = 1
    chief: bool = True
    addresses: tuple = ()

    def describe(self) -> str:
        if self.strategy != "multiworker":
            return self.strategy
        return f"multiworker: worker {self.index} of {self.workers}{' (chief)' if self.chief else ''}"


def parse_tf_config(text: Optional[str]) -> Task:
    """TF_CONFIG -> Task, with an error that says what is wrong with it. The chief is the task
    of type 'chief' if the cluster has one, else worker 0 (TensorFlow's rule)."""
    if not text:
        raise ClusterError("--strategy multiworker needs TF_CONFIG: a JSON object such as "
                           '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                           '"task": {"type": "worker", "index": 0}} (docs/training.md, "More than one machine")')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClusterError(f"TF_CONFIG is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ClusterError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ClusterError("TF_CONFIG needs a 'cluster' object (job name -> list of host:port) and a 'task' "
                           "object ({'type': ..., 'index': ...})")
    unknown = sorted(set(cluster) - {"chief", "worker"})
    if unknown:
        raise ClusterError(f"TF_CONFIG's cluster has job(s) {', '.join(unknown)}; MultiWorkerMirroredStrategy "
                           "uses 'chief' (at most one) and 'worker'")
    jobs: Dict[str, List[str]] = {}
    for job, hosts in cluster.items():
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and ":" in h for h in hosts):
            raise ClusterError(f"TF_CONFIG's cluster['{job}'] must be a non-empty list of 'host:port' strings")
        jobs[job] = hosts
    if len(jobs.get("chief", [])) > 1:
        raise ClusterError("TF_CONFIG's cluster may have one chief, not %d" % len(jobs["chief"]))
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in jobs:
        raise ClusterError(f"TF_CONFIG's task type {kind!r} is not a job of its cluster ({', '.join(jobs)})")
    if not isinstance(index, int) or not 0 <= index < len(jobs[kind]):
        raise ClusterError(f"TF_CONFIG's task index {index!r} is not within 0..{len(jobs[kind]) - 1} for job {kind!r}")
    ordered = jobs.get("chief", []) + jobs.get("worker", [])
    number = index if kind == "chief" else len(jobs.get("chief", [])) + index
    return Task("multiworker", number, len(ordered), number == 0, tuple(ordered))


def task_for(strategy: str, environ=os.environ) -> Task:
    if strategy not in STRATEGIES:
        raise ClusterError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "multiworker":
        return parse_tf_config(environ.get("TF_CONFIG"))
    return Task(strategy)


def gpus() -> List[str]:
    import tensorflow as tf

    return [g.name for g in tf.config.list_physical_devices("GPU")]


def check_mixed_precision(mixed_precision: bool) -> None:
    """float16 compute pays only on a GPU's tensor cores; on a CPU it emulates and runs slower."""
    if mixed_precision and not gpus():
        raise ClusterError("--mixed-precision needs a GPU: TensorFlow sees none here, and on a CPU float16 is "
                           "emulated and only slows training down; train without it")


_STRATEGY = None


def make_strategy(task: Task):
    """The tf.distribute strategy for `task`, made once per process (TensorFlow allows one
    multi-worker strategy per process, made before other ops run)."""
    global _STRATEGY
    import tensorflow as tf

    if _STRATEGY is not None:
        return _STRATEGY
    if task.strategy == "mirrored":
        if not gpus():
            raise ClusterError("--strategy mirrored spreads training over this host's GPUs, and TensorFlow sees "
                               "none here; use --strategy default")
        _STRATEGY = tf.distribute.MirroredStrategy()
    elif task.strategy == "multiworker":
        _keras_multiworker_fix()
        _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.AUTO))
    else:
        _STRATEGY = tf.distribute.get_strategy()
    return _STRATEGY


def replicas(strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def check_batch(batch_size: int, n_replicas: int) -> int:
    """The per-replica batch; the global batch must split evenly so every replica's mean loss
    weighs its images as the single-device run does."""
    if batch_size % n_replicas:
        raise ClusterError(f"--batch-size {batch_size} does not split evenly over {n_replicas} replicas; "
                           f"use a multiple of {n_replicas}")
    return batch_size // n_replicas


def replica_slice(indices, replica: int, n_replicas: int):
    """The images of one global batch that replica `replica` computes (every R-th, from its own)."""
    return indices[replica::n_replicas]


def synchronise_batchnorm(model) -> None:
    """BatchNormalization over the global batch, not each replica's part of it."""
    import keras

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def distributed(strategy, make_dataset):
    """make_dataset(pipeline, pipelines, local_replicas) -> a tf.data.Dataset yielding, for each
    step, one per-replica batch for each of this pipeline's local replicas in turn. One device:
    the dataset itself. Several: the strategy's per-worker datasets, not re-sharded."""
    import tensorflow as tf

    if replicas(strategy) == 1:
        return make_dataset(0, 1, 1)

    def fn(context: tf.distribute.InputContext):
        local = replicas(strategy) // context.num_input_pipelines
        ds = make_dataset(context.input_pipeline_id, context.num_input_pipelines, local)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options)

    return strategy.distribute_datasets_from_function(fn)


def _keras_multiworker_fix() -> None:
    """Let Keras 3's fit run under MultiWorkerMirroredStrategy (keras-team/keras#20585): build the
    model from one replica's batch, and average the per-step logs across replicas as Keras does
    for MirroredStrategy. Refuses, rather than guesses, if Keras has moved the pieces."""
    try:
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError as exc:  # pragma: no cover - a Keras without the TensorFlow trainer
        raise ClusterError(f"this Keras has no TensorFlow trainer to run multi-worker training with: {exc}") from None
    Trainer = tf_trainer.TensorFlowTrainer
    if getattr(Trainer, "_fracture_edge_multiworker", False):
        return
    needed = ("_maybe_symbolic_build", "_symbolic_build")
    if not all(hasattr(Trainer, n) for n in needed) or not all(
            hasattr(tf_trainer, n) for n in ("reduce_per_replica", "_collective_all_reduce_multi_worker",
                                             "_is_per_replica_instance")):
        raise ClusterError("this Keras release changed the trainer internals that multi-worker training relies on "
                           "(train/distribute.py); pin keras to a tested version (pyproject.toml)")
    import tensorflow as tf

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda x: self.distribute_strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues) else x, batch)
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if tf_trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if tf_trainer._is_per_replica_instance(v) else v,
                values)
        return original_reduce(values, strategy, reduction)

    Trainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    Trainer._fracture_edge_multiworker = True
