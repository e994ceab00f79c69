"""Write the examples' Parquet batches from data scikit-learn ships (nothing is downloaded).

- `digits-{old,new,score}.parquet`: 8x8 handwritten digits, each image a fixed-size list of
  64 numbers in column `image`, the label in `digit` (the new batch is drawn more faintly:
  the scanner changed);
- `diabetes-{old,new,score}.parquet`: disease progression a year on (`progression`, a number)
  from ten measurements, with `sex` as a string column (the new batch comes from an older
  clinic population).

Run: python examples/make_data.py [FOLDER]   (default: example-data)
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_diabetes, load_digits


def main(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)

    digits = load_digits()
    order = rng.permutation(len(digits.target))
    images = digits.images.reshape(len(order), 64).astype(np.float32)
    for name, part, scale in (("old", order[:900], 1.0), ("new", order[900:1500], 0.7), ("score", order[1500:], 0.7)):
        column = pa.FixedSizeListArray.from_arrays(pa.array((images[part] * scale).ravel()), 64)
        table = pa.table({"image": column, "digit": pa.array(digits.target[part].astype(np.int64))})
        pq.write_table(table.drop_columns(["digit"]) if name == "score" else table, f"{folder}/digits-{name}.parquet")

    diabetes = load_diabetes(scaled=False)
    x, y = diabetes.data, diabetes.target
    sex = np.where(x[:, 1] == 1, "female", "male")
    # by age: the new clinic's patients are older; a stable sort splits ties among equal ages the
    # same way on every machine (NumPy's default sort may not, by CPU)
    older = np.argsort(x[:, 0], kind="stable")
    parts = {"old": older[:250], "new": older[250:380], "score": older[380:]}
    names = [n for n in diabetes.feature_names if n != "sex"]
    for name, part in parts.items():
        columns = {n: x[part, diabetes.feature_names.index(n)] for n in names}
        table = pa.table({**columns, "sex": pa.array(sex[part]), "progression": y[part]})
        pq.write_table(table, f"{folder}/diabetes-{name}.parquet")
    print(f"wrote digits-*.parquet and diabetes-*.parquet to {folder}/")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "example-data")
