//! DICOM loading: any bytes after the "DICM" preamble must give an image or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    file.extend_from_slice(data);
    let path = std::env::temp_dir().join(format!("unveil-fuzz-{}.dcm", std::process::id()));
    if std::fs::write(&path, &file).is_ok() {
        let _ = unveil::engine::image::load(&path);
    }
});
