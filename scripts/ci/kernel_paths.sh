#!/usr/bin/env bash
# CI, after `cargo test --release`: runs the op tests and the model equality tests again on one
# kernel path, `UNVEIL_KERNELS` if set, else `portable` (the code an ARM or any non-AVX2 CPU
# runs and that an x86 machine never takes on its own). `.ci/run` calls it for the portable
# path and, on an AVX-512 CPU (whose default run covers the AVX-512 path), for `avx2`, so that
# every path this CPU has passes the equality tests; tests/engine/kernel_paths.rs compares the
# paths with each other in one process.
#
#   [UNVEIL_KERNELS=avx2] bash scripts/ci/kernel_paths.sh [CARGO TEST OPTIONS]
#
# Options go to both `cargo test` calls: scripts/ci/aarch64.sh passes `--target
# aarch64-unknown-linux-gnu` to run the same subset on ARM under qemu-user. Without options it
# reuses `cargo test --release`'s build (same profile and features: nothing is compiled) and
# CARGO_TARGET_DIR; about 1 min per path on 2 cores. The core subset reaches every kernel:
#   lib  engine::ops::                 the packed GEMM against a naive product, the path switch
#   ops::                              every op (depthwise, fused conv + act/residual, Winograd
#                                      and 1 x 1 GEMMs, layer chain, pools, ReLU backward)
#                                      against stock candle, finite differences, PyTorch
#   models::logits/gradients           EfficientNet-Lite0 vs PyTorch (depthwise, ReLU6)
#   torchvision resnet18, resnet50     ResNets vs torchvision (Winograd, chain, bottlenecks)
#   torchvision densenet121            DenseNet vs torchvision (1 x 1 over concatenations)
#   xception logits/gradients          separable convolutions vs Keras / PyTorch (needs the
#                                      fetched chest X-ray model, as the main suite does)
#   xray chexnet                       a CheXNet checkpoint vs PyTorch
#   onnx every exported graph          14 ONNX architectures vs PyTorch (grouped, non-square
#                                      and depthwise convolutions, pools, the ONNX fusions)
#   kernel_paths::the_process_path     proves the variable took effect in this run
# and, unless KERNEL_PATHS_CORE=1 (aarch64.sh sets it: under qemu these take over 15 minutes),
# about 60 s more on x86:
#   methods::, onnx methods            IG, Grad-CAM, SmoothGrad vs Captum and PyTorch
#   onnx_tf2onnx exports, Grad-CAM     the tf2onnx graphs vs TensorFlow
#   torchvision resnet34, resnet101    the deeper ResNets
#   xray torchxrayvision               TorchXRayVision's DenseNet vs xrv
#   reference faithfulness             curves and randomisation vs the Python recomputation
# Left out: the stock-candle and device-generic comparisons (their other side is candle's,
# path-free and slow), everything not numeric.
set -euo pipefail
cd "$(dirname "$0")/../.."

export UNVEIL_KERNELS="${UNVEIL_KERNELS:-portable}"
echo "kernel path: $UNVEIL_KERNELS"
export CARGO_TERM_COLOR=never
more=(
  methods::
  onnx::methods_on_graphs_match_captum_and_pytorch
  onnx_tf2onnx::every_tf2onnx_export_matches_tensorflow
  onnx_tf2onnx::grad_cam_on_tf2onnx_graphs_matches_tensorflow
  torchvision::resnet34_matches_torchvision
  torchvision::resnet101_matches_torchvision
  xray::a_torchxrayvision_model_is_recognised_with_its_labels_and_preprocessing
  reference::faithfulness_and_randomisation_match_the_python_recomputation
)
if [ "${KERNEL_PATHS_CORE:-0}" = 1 ]; then more=(); fi
cargo test --release "$@" --lib -- engine::ops::
cargo test --release "$@" --test engine -- "${more[@]}" \
  ops:: \
  models::logits_match_pytorch \
  models::guided_and_vanilla_gradients_match_pytorch \
  torchvision::resnet18_matches_torchvision \
  torchvision::resnet50_matches_torchvision \
  torchvision::densenet121_guides_the_functional_relu_that_hooks_miss \
  xception::logits_match_the_original_keras_model \
  xception::guided_and_vanilla_gradients_match_the_pytorch_port \
  xray::a_chexnet_checkpoint_in_the_legacy_format_matches_pytorch \
  onnx::every_exported_graph_matches_pytorch \
  kernel_paths::the_process_path_follows_unveil_kernels
