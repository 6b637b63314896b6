//! Engine and CLI integration tests: one binary, a module per area.

mod architectures;
mod cli;
mod cli_flags;
mod common;
#[path = "../support/corpus.rs"]
mod corpus;
mod dicom;
mod export;
mod faithfulness;
mod fetch;
mod generic;
mod kernel_paths;
mod mask;
mod methods;
mod models;
mod onnx;
mod onnx_graphs;
mod onnx_malformed;
mod onnx_reader;
mod onnx_tf2onnx;
mod ops;
mod pth;
mod reference;
mod robustness;
mod saliency;
mod sanity;
mod torchvision;
mod unveil_loop;
mod xception;
mod xray;
