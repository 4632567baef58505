"""Writes the inputs of examples/spmd_matmul.mlir and the expected outputs (numpy)."""
import pathlib
import numpy as np

here = pathlib.Path(__file__).parent
x = (np.arange(32, dtype=np.float32).reshape(4, 8) % 7 - 3) / 2
w = (np.arange(32, dtype=np.float32).reshape(8, 4) % 5) / 4 - 0.5
b = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
y = np.maximum(x @ w, 0) + b
np.save(here / "x.npy", x)
np.save(here / "w.npy", w)
np.save(here / "b.npy", b)
np.save(here / "expected_y.npy", y)
np.save(here / "expected_sum.npy", np.array(y.sum(), dtype=np.float32))
print(y)
print(y.sum())
