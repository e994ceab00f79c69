"""The server a user would write instead of `ctrain serve`: FastAPI + `keras.Model.predict`.

Loads a `.keras` model and answers `POST /predict` with `{"rows": [{column: value}, ...]}`
(the columns in the model's input order) by `model.predict` on the rows, per request, as
FastAPI's and Keras's guides show. The peer of scripts/bench_serve.py.

Run: python scripts/peer_fastapi_keras.py --model member-0.keras --columns x0,x1,... --port 8001
"""

# No `from __future__ import annotations`: FastAPI reads the handler's annotations at run time.

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--columns", required=True)
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args()
    import keras
    import numpy as np
    import uvicorn
    from fastapi import FastAPI, Request

    model = keras.models.load_model(args.model, compile=False)
    columns = args.columns.split(",")
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        rows = (await request.json())["rows"]
        x = np.array([[row[c] for c in columns] for row in rows], dtype="float32")
        proba = model.predict(x, verbose=0)
        return {"predictions": (proba[:, 0] > 0.5).astype(int).tolist(), "probabilities": proba.tolist()}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
