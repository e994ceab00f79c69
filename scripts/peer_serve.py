"""The servers `ctrain serve` is measured against (scripts/bench_serve.py): what a competent
engineer writes in thirty lines, and the HTTP stack's ceiling.

One Starlette app run by uvicorn (the same server, parser choices and worker count as `ctrain
serve`), answering `POST /predict` with `{"rows": [{column: value, ...}, ...]}`:
- `--mode loop`: the model loaded with Keras and called through one `tf.function` with an input
  signature (Keras's advice for small inputs: `model(x)`, never `model.predict` per request),
  in the event loop;
- `--mode thread`: the same call in Starlette's threadpool (the event loop stays free);
- `--mode constant`: the body parsed as JSON, then a constant answer of the same shape: the
  ceiling of this HTTP stack;
- `--mode predict`: `model.predict` per request in an `async def` handler, the way tutorials
  show it (a footnote, never a headline: Keras's documentation says not to).
`--json orjson` parses and answers with orjson instead of the standard library (the better of
the two counts for the peer). A model with one input per column (the Keras way) gets one array
per column, strings for string columns; any other model one float32 matrix of the columns.

Run: python scripts/peer_serve.py --model member-0.keras --columns x0,x1,... --port 8001 [--workers 2]
"""

# No `from __future__ import annotations`: kept as a user would write it.

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
CONFIG = "PEER_SERVE_CONFIG"


def make_app():
    """The app of one worker, configured by the environment (uvicorn's workers import it)."""
    config = json.loads(os.environ[CONFIG])
    mode, columns = config["mode"], config["columns"]
    if config["json"] == "orjson":
        import orjson

        loads, dumps = orjson.loads, lambda d: orjson.dumps(d, option=orjson.OPT_SERIALIZE_NUMPY)
    else:
        loads, dumps = json.loads, None
    import numpy as np
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if config["threads"]:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(config["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(config["threads"])
    import keras

    model = keras.models.load_model(config["model"], compile=False)
    by_column = len(model.inputs) > 1  # the Keras way: one input per column, each of shape (1,)
    shape = tuple(model.inputs[0].shape[1:])

    def arrays(rows):
        if by_column:
            return {c: np.array([[r[c]] for r in rows], dtype=_dtype(model, c)) for c in columns}
        if len(columns) == 1:  # one column holding the whole input (an image as a list of numbers)
            return np.array([r[columns[0]] for r in rows], dtype="float32").reshape((-1, *shape))
        return np.array([[r[c] for c in columns] for r in rows], dtype="float32")

    if mode in ("loop", "thread"):
        import tensorflow as tf

        if by_column:
            spec = {t.name.split(":")[0]: tf.TensorSpec((None, 1), t.dtype) for t in model.inputs}
        else:
            spec = tf.TensorSpec((None, *shape), "float32")
        infer = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)

        def score(rows):
            return infer(arrays(rows)).numpy()
    elif mode == "predict":

        def score(rows):
            return model.predict(arrays(rows), verbose=0)
    else:
        units = int(model.outputs[0].shape[-1])

        def score(rows):  # the rows parsed (by the handler), no model: the stack's ceiling
            return np.full((len(rows), units), 0.5, "float32")

    def answer(proba):
        binary = proba.shape[-1] == 1
        predictions = (proba[:, 0] > 0.5).astype(int) if binary else proba.argmax(axis=1)
        body = {"predictions": predictions, "probabilities": proba}
        if dumps is not None:
            return Response(dumps(body), media_type="application/json")
        return JSONResponse({k: v.tolist() for k, v in body.items()})

    async def predict(request):
        rows = loads(await request.body())["rows"]
        proba = await run_in_threadpool(score, rows) if mode == "thread" else score(rows)
        return answer(proba)

    async def health(request):
        return JSONResponse({"status": "ready"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])


def _dtype(model, column):
    t = next(t for t in model.inputs if t.name.split(":")[0] == column)
    return object if "string" in str(t.dtype) else str(t.dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--columns", required=True)
    p.add_argument("--mode", choices=("loop", "thread", "constant", "predict"), default="loop")
    p.add_argument("--json", choices=("stdlib", "orjson"), default="stdlib")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="TensorFlow's thread pools (0: its default)")
    args = p.parse_args()
    os.environ[CONFIG] = json.dumps(
        {"model": os.path.abspath(args.model), "columns": args.columns.split(","), "mode": args.mode,
         "json": args.json, "threads": args.threads}
    )  # fmt: skip
    import sys

    import uvicorn

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    uvicorn.run("peer_serve:make_app", factory=True, host="127.0.0.1", port=args.port, workers=args.workers,
                log_level="warning", access_log=False)  # fmt: skip


if __name__ == "__main__":
    main()
