"""ServerApp: FedAvg over every connected SuperNode for a few rounds."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fclabapp.task import FEATURES, TRUE_W

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config["num-server-rounds"])
    nodes = int(context.run_config["min-nodes"])
    replies: list[int] = []

    def count_and_aggregate(records: list, key: str):  # type: ignore[no-untyped-def]
        replies.append(len(records))  # SuperNodes that contributed to this round
        return aggregate_metricrecords(records, key)

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes,
                      min_available_nodes=nodes, min_evaluate_nodes=0, train_metrics_aggr_fn=count_and_aggregate)
    start = time.monotonic()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(FEATURES)]), num_rounds=rounds,
                            train_config=ConfigRecord({}))
    w = result.arrays.to_numpy_ndarrays()[0]
    # One line the lab parses: rounds completed, nodes per round, distance to the true model.
    print(f"FCLAB-RESULT rounds={len(result.train_metrics_clientapp)} nodes={min(replies, default=0)} "
          f"error={float(np.linalg.norm(w - TRUE_W)):.6f} seconds={time.monotonic() - start:.1f}", flush=True)
