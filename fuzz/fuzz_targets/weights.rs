//! Weight files: any bytes, as safetensors or as a PyTorch zip checkpoint, must load or give an
//! error, never a panic (and the .pth reader never runs code).
#![no_main]

use libfuzzer_sys::fuzz_target;
use unveil::engine::models::{layers::Weights, read_weights};

fuzz_target!(|data: &[u8]| {
    let _ = Weights::from_safetensors(data);
    let path = std::env::temp_dir().join(format!("unveil-fuzz-{}.pth", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = read_weights(&path);
    }
});
