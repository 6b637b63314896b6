//! Image decoding and preprocessing: any bytes must give an image or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unveil::engine::image;
use unveil::engine::models::{ModelInfo, Resize};

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = image::decode(data) {
        let info = ModelInfo {
            name: "fuzz".into(),
            description: String::new(),
            input_size: (32, 32),
            mean: [0.5; 3],
            std: [0.5; 3],
            dataset_mean: [0.5; 3],
            labels: vec!["a".into()],
            resize: if data.len() % 2 == 0 { Resize::Bilinear } else { Resize::Nearest },
            multi_label: false,
            bgr: false,
        };
        let x = image::to_model_input(&img, &info, &candle_core::Device::Cpu).expect("a decoded image always preprocesses");
        assert!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }
});
