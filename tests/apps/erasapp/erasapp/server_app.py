"""ServerApp: FedAvg over one numpy array."""
import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config["num-server-rounds"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=1,
                      min_train_nodes=1, min_evaluate_nodes=1)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(4, dtype=np.float32)]),
                            num_rounds=rounds, timeout=120)
    final = result.arrays.to_numpy_ndarrays()[0]
    print(f"ERASAPP final weights: {final.tolist()}")
