#!/usr/bin/env python3
"""The chest X-ray Xception exported with tf2onnx, for the ignored test in
tests/engine/onnx_tf2onnx.rs (the_chest_xray_xception_through_tf2onnx_...).

What: rebuilds the pneumonia model in Keras 2 (TensorFlow 2.15: keras.applications.Xception,
include_top=False, 150 x 150, then GlobalAveragePooling2D, Dense(128, relu), Dropout(0.3),
Dense(2) as the package does), fills it from unveil's converted weights
($UNVEIL_MODELS_DIR/pneumonia-xception.safetensors, made by `unveil models fetch
pneumonia-xception`; every tensor used exactly once), checks its logits against the original
Keras 3 model's on the 4 X-rays of tests/fixtures/pneumonia_xception.safetensors, and converts
it with README's recipe (`python -m tf2onnx.convert --saved-model DIR --output FILE
--inputs-as-nchw input_1`) to $UNVEIL_MODELS_DIR/pneumonia-xception-tf2onnx.onnx (85 MB; the
package states no licence, so the file stays in the model folder, never in the repository).
onnxruntime must agree with TensorFlow on the 4 X-rays.

Run (repo root; the venv of scripts/tf2onnx-requirements.txt):
  /work/venv-tf/bin/python scripts/fetch/tf2onnx_pneumonia_xception.py
  cargo test --release --test engine -- --ignored the_chest_xray_xception_through_tf2onnx
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"

import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
layers = tf.keras.layers


def models_dir() -> Path:
    if os.environ.get("UNVEIL_MODELS_DIR"):
        return Path(os.environ["UNVEIL_MODELS_DIR"])
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "unveil" / "models"


def build() -> tf.keras.Model:
    tf.keras.backend.clear_session()  # the residual layers are conv2d, conv2d_1, ... again
    x_in = layers.Input((150, 150, 3), name="input_1")
    base = tf.keras.applications.Xception(include_top=False, weights=None, input_tensor=x_in)
    x = layers.GlobalAveragePooling2D()(base.output)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(0.3)(x)
    return tf.keras.Model(x_in, layers.Dense(2, name="dense_1")(x))


def fill(model: tf.keras.Model, w: dict) -> None:
    """unveil's PyTorch-layout tensors (Keras layer names) into the Keras layers."""
    used = set()

    def take(name):
        used.add(name)
        return w[name]
    for layer in model.layers:
        n = layer.name
        if isinstance(layer, layers.SeparableConv2D):
            dw = take(f"{n}.depthwise_weight").transpose(2, 3, 0, 1)  # [c,1,h,w] -> [h,w,c,1]
            pw = take(f"{n}.pointwise_weight").transpose(2, 3, 1, 0)  # [o,i,1,1] -> [1,1,i,o]
            layer.set_weights([dw, pw])
        elif isinstance(layer, layers.Conv2D):
            layer.set_weights([take(f"{n}.weight").transpose(2, 3, 1, 0)])
        elif isinstance(layer, layers.BatchNormalization):
            layer.set_weights([take(f"{n}.{k}") for k in
                               ("weight", "bias", "running_mean", "running_var")])
        elif isinstance(layer, layers.Dense):
            layer.set_weights([take(f"{n}.weight").T, take(f"{n}.bias")])
    missing = set(w) - used
    assert not missing, f"tensors not used: {sorted(missing)[:5]}"


def main():
    src = models_dir() / "pneumonia-xception.safetensors"
    if not src.exists():
        sys.exit(f"{src} is missing: run `unveil models fetch pneumonia-xception` first")
    model = build()
    fill(model, load_file(str(src)))
    fix = load_file(str(REPO / "tests/fixtures/pneumonia_xception.safetensors"))
    x = fix["inputs"]
    tf_logits = model(x.transpose(0, 2, 3, 1), training=False).numpy()
    d_keras = float(np.abs(tf_logits - fix["logits_keras"]).max())
    print(f"TensorFlow 2.15 rebuild vs the original Keras 3 model: logits max diff {d_keras:.2e}")
    assert d_keras < 1e-3, d_keras

    out = models_dir() / "pneumonia-xception-tf2onnx.onnx"
    with tempfile.TemporaryDirectory() as d:
        model.save(Path(d) / "sm", save_format="tf")
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model",
                        str(Path(d) / "sm"), "--output", str(out), "--inputs-as-nchw",
                        "input_1"], check=True, capture_output=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ort_logits = np.concatenate([sess.run(None, {"input_1": x[i:i + 1]})[0] for i in range(4)])
    d_ort = float(np.abs(ort_logits - tf_logits).max())
    print(f"onnxruntime vs TensorFlow: logits max diff {d_ort:.2e}; wrote {out} "
          f"({out.stat().st_size} bytes)")
    assert d_ort < 1e-4 * max(1.0, float(np.abs(tf_logits).max())), d_ort


if __name__ == "__main__":
    main()
