//! Saliency throughput: fwd + guided backward to the input per noisy 224 x 224 sample, with
//! this crate's ops and with stock candle ops, and the default end-to-end run.
//! `cargo bench --bench saliency` (a plain bench binary; prints a table).

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::Device;
use unveil::engine::image;
use unveil::engine::models::{self, DEFAULT_MODEL};
use unveil::engine::ops::Backend;
use unveil::engine::params::{SaliencyParams, UnveilParams};
use unveil::engine::saliency::input_gradient;
use unveil::engine::unveil::{classify, run, top_k};

fn main() {
    let img = image::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/chelsea.png"
    )))
    .unwrap();
    let never = AtomicBool::new(false);
    println!("| backend | samples | ms per sample |\n|---|---|---|");
    for (backend, samples) in [(Backend::Fast, 16), (Backend::Stock, 2)] {
        let model = models::load(DEFAULT_MODEL, &Device::Cpu, backend).unwrap();
        let x = image::to_model_input(&img, model.info(), &Device::Cpu).unwrap();
        let target = top_k(model.as_ref(), &classify(model.as_ref(), &x).unwrap(), 1)[0].class;
        let p = SaliencyParams {
            samples,
            ..Default::default()
        };
        // Warm-up (allocator, thread pool), then the measured pass.
        input_gradient(
            model.as_ref(),
            &x,
            target,
            &SaliencyParams {
                samples: 1,
                ..p.clone()
            },
            &mut |_, _| {},
            &never,
        )
        .unwrap();
        let t = Instant::now();
        input_gradient(model.as_ref(), &x, target, &p, &mut |_, _| {}, &never).unwrap();
        println!(
            "| {backend:?} | {samples} | {:.0} |",
            t.elapsed().as_secs_f64() * 1e3 / samples as f64
        );
    }
    let model = models::load(DEFAULT_MODEL, &Device::Cpu, Backend::Fast).unwrap();
    let x = image::to_model_input(&img, model.info(), &Device::Cpu).unwrap();
    let t = Instant::now();
    let out = run(
        model.as_ref(),
        &x,
        &UnveilParams::default(),
        None,
        &mut |_| {},
        &never,
    )
    .unwrap();
    println!(
        "\nend-to-end default run (chelsea, {} iterations x {} samples): {:.1} s",
        out.steps.len(),
        SaliencyParams::default().samples,
        t.elapsed().as_secs_f64()
    );
}
