"""ClientApp: a few local gradient steps on the SuperNode's partition."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fclabapp.task import local_steps, loss, partition

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config.get("partition-id", 0))  # flower-ctx: the VM's number in its role
    x, y = partition(pid, int(context.node_config.get("site", 0)))  # FL_NODE_CONFIG site=N
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    w = local_steps(w, x, y, int(context.run_config["local-steps"]), float(context.run_config["learning-rate"]))
    idle = float(context.run_config["round-sleep"])
    if idle > 0:
        time.sleep(idle)  # a long-running round: the Fleet connection stays open meanwhile
    metrics = MetricRecord({"num-examples": len(y), "train-loss": loss(w, x, y), "partition-id": pid})
    return Message(RecordDict({"arrays": ArrayRecord([w]), "metrics": metrics}), reply_to=msg)
