"""ClientApp: adds 1 to every weight, reports a fake loss."""
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    time.sleep(float(context.run_config.get("sleep-s", 0)))  # a long round, for upgrade and drop drills
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    new = [a + 1.0 for a in arrays]
    content = RecordDict({"arrays": ArrayRecord(new),
                          "metrics": MetricRecord({"train_loss": float(np.sum(new[0])), "num-examples": 10})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    content = RecordDict({"metrics": MetricRecord({"eval_loss": float(np.sum(arrays[0])), "num-examples": 10})})
    return Message(content=content, reply_to=msg)
